import { expect, test } from 'bun:test'
import { slowCatchUpOf } from './nats-server-version'

test('nats-server releases before 2.9.15 are named as the cause of a slow catch-up; later ones are not', () => {
  for (const v of ['2.9.10', '2.9.14', '2.9.0', '2.8.4', 'v2.9.10', '2.9.10-beta.1']) {
    expect(slowCatchUpOf(v)).toContain(`nats-server ${v} re-counts`)
    expect(slowCatchUpOf(v)).toContain('run nats-server 2.9.15 or later')
  }
  for (const v of ['2.9.15', '2.9.25', '2.10.0', '2.10.29', '2.11.3', '3.0.0']) expect(slowCatchUpOf(v)).toBeUndefined()
  // A version it cannot read says nothing (an unknown server is not blamed).
  for (const v of [undefined, '', 'nightly']) expect(slowCatchUpOf(v)).toBeUndefined()
})
