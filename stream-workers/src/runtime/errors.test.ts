import { describe, expect, test } from 'bun:test'
import { isTransientDbError } from './errors'

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
  })
  test('programming and constraint errors are not', () => {
    expect(isTransientDbError(new TypeError('boom'))).toBe(false)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: '42P01' }))).toBe(false)
    expect(isTransientDbError(Object.assign(new Error('x'), { code: '23505' }))).toBe(false)
  })
})
