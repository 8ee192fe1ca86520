import { describe, expect, test } from 'bun:test'
import { loadConfig } from '../../core/config'
import { authorize, identify } from './auth'
import { Forbidden, Unauthorized } from './errors'

const config = loadConfig({ FANFARE_INGEST_TOKEN: 'ingest-token-0123456789', FANFARE_ADMIN_TOKEN: 'admin-token-0123456789' })

describe('auth', () => {
  test('identify maps tokens to privileges; unset tokens never match', () => {
    expect(identify(config, 'admin-token-0123456789')).toBe('admin')
    expect(identify(config, 'ingest-token-0123456789')).toBe('ingest')
    expect(identify(config, 'other')).toBeUndefined()
    expect(identify({ FANFARE_INGEST_TOKEN: undefined, FANFARE_ADMIN_TOKEN: undefined }, '')).toBeUndefined()
  })

  test('authorize: 401 missing/unknown, 403 ingest on admin, admin accepted for ingest', () => {
    expect(() => authorize(config, undefined, 'ingest')).toThrow(Unauthorized)
    expect(() => authorize(config, 'Basic abc', 'ingest')).toThrow(Unauthorized)
    expect(() => authorize(config, 'Bearer nope', 'ingest')).toThrow(Unauthorized)
    expect(() => authorize(config, 'Bearer ingest-token-0123456789', 'admin')).toThrow(Forbidden)
    expect(authorize(config, 'Bearer ingest-token-0123456789', 'ingest')).toBe('ingest')
    expect(authorize(config, 'bearer admin-token-0123456789', 'ingest')).toBe('admin')
    expect(authorize(config, 'Bearer admin-token-0123456789', 'admin')).toBe('admin')
  })
})
