import { describe, expect, test } from 'bun:test'
import { dbErrorSummary, isDataDbError, isTransientDbError } from './errors'

describe('isTransientDbError', () => {
  test('connection loss and retryable SQLSTATEs are transient', () => {
    expect(isTransientDbError(Object.assign(new Error('x'), { code: 'CONNECTION_CLOSED' }))).toBe(true)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: '57P01' }))).toBe(true)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: '40001' }))).toBe(true)
    // drizzle wraps driver errors in `cause`
    expect(isTransientDbError(new Error('query failed', { cause: Object.assign(new Error('x'), { code: 'ECONNREFUSED' }) }))).toBe(true)
    // Bun's SQL client
    expect(isTransientDbError(Object.assign(new Error('x'), { code: 'ERR_POSTGRES_SERVER_ERROR', errno: '57P01' }))).toBe(true)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: 'ERR_POSTGRES_CONNECTION_CLOSED' }))).toBe(true)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: 'ERR_POSTGRES_SERVER_ERROR', errno: '23505' }))).toBe(false)
    // A read-only database (a standby during failover): writes come back when it is writable again.
    expect(isTransientDbError(Object.assign(new Error('x'), { code: 'ERR_POSTGRES_SERVER_ERROR', errno: '25006' }))).toBe(true)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: '25P02' }))).toBe(false)
  })
  test("a driver's prepared statements out of step with the server (after cancels) are transient: the next try succeeds", () => {
    // As Bun's SQL client raised it after statement_timeout cancels (bench/prepared-cancel-probe.ts).
    const duplicate = Object.assign(new Error('prepared statement "P0" already exists'), { name: 'PostgresError', code: 'ERR_POSTGRES_SERVER_ERROR', errno: '42P05' })
    expect(isTransientDbError(duplicate)).toBe(true)
    expect(isTransientDbError(new Error('Failed query: ...', { cause: duplicate }))).toBe(true)
    expect(isTransientDbError(Object.assign(new Error('prepared statement "P3" does not exist'), { code: '26000' }))).toBe(true)
    // Other class 42 errors are the SQL's own: a bug, not retried.
    expect(isTransientDbError(Object.assign(new Error('x'), { code: 'ERR_POSTGRES_SERVER_ERROR', errno: '42703' }))).toBe(false)
  })
  test('programming and constraint errors are not', () => {
    expect(isTransientDbError(new TypeError('boom'))).toBe(false)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: '42P01' }))).toBe(false)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: '23505' }))).toBe(false)
  })
})

describe('isDataDbError', () => {
  test('Postgres refusing the data (classes 22 and 54) is a data error, from either driver, wrapped or not', () => {
    expect(isDataDbError(Object.assign(new Error('unsupported Unicode escape sequence'), { code: '22P05' }))).toBe(true)
    expect(isDataDbError(new Error('Failed query: ...', { cause: Object.assign(new Error('date/time field value out of range'), { code: '22008' }) }))).toBe(true)
    expect(isDataDbError(Object.assign(new Error('x'), { code: 'ERR_POSTGRES_SERVER_ERROR', errno: '54000' }))).toBe(true)
    expect(isDataDbError(Object.assign(new Error('x'), { code: '23505' }))).toBe(false)
    expect(isDataDbError(Object.assign(new Error('x'), { code: '42P01' }))).toBe(false)
    expect(isDataDbError(Object.assign(new Error('x'), { code: 'CONNECTION_CLOSED' }))).toBe(false)
    expect(isDataDbError(new TypeError('boom'))).toBe(false)
  })
  test('the summary is the SQLSTATE and the server message, not the whole query', () => {
    const err = new Error('Failed query: with guard as (...) params: ...', { cause: Object.assign(new Error('unsupported Unicode escape sequence'), { errno: '22P05', code: 'ERR_POSTGRES_SERVER_ERROR' }) })
    expect(dbErrorSummary(err)).toBe('22P05 unsupported Unicode escape sequence')
  })
})
