import { expect, test } from 'bun:test'
import { ConfigError } from './config'
import { DatabaseUnreachable, NotMigrated } from './db/client'
import { DirInUse } from './db/dir-lock'
import { ListenFailed } from './listen'
import { EventSubjectsTaken, MaxPayloadTooSmall, NatsUnreachable, PartitionsChanged, SubjectPrefixChanged, UpgradeRequired } from './nats'
import { startFailure } from './start-failure'
// npm start's own: one list for every start, so they are checked here beside core's.
import { DataDirUnusable } from '../scripts/all-in-one'
import { NatsServerMissing } from '../scripts/embedded-nats'

const saysWhatToFix = [
  new NatsUnreachable('cannot reach NATS at NATS_URL (nats://127.0.0.1:1): connection refused', new Error('refused')),
  new DatabaseUnreachable('DATABASE_URL', 'postgres://u:p@127.0.0.1:1/fanfare', Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })),
  new NotMigrated('0042_x'),
  new ListenFailed('127.0.0.1', 3000, 'PORT', Object.assign(new Error('in use'), { code: 'EADDRINUSE' })),
  new ConfigError(['PORT: must be a port']),
  new DirInUse('the embedded database at /d/pglite.lock is in use by process 7; stop it first'),
  new NatsServerMissing(),
  new DataDirUnusable('/d', Object.assign(new Error('denied'), { code: 'EACCES' })),
  // What NATS holds refuses this start: each message names the setting or command that fixes it.
  new UpgradeRequired('stream FANFARE_CHANGES of an older version is still there'),
  new MaxPayloadTooSmall('nats://127.0.0.1:4222', 65536),
  new PartitionsChanged('FANFARE', 8, 4),
  new SubjectPrefixChanged('FANFARE', ['a.ev.>'], 'b'),
  new EventSubjectsTaken('FANFARE', 'OTHER', 'a.ev.>'),
]

test('a failure that says what to fix is its name and message, or the message alone for npm start: no stack', () => {
  for (const err of saysWhatToFix) {
    expect(startFailure(err)).toBe(`${err.name}: ${err.message}`)
    expect(startFailure(err, { named: false })).toBe(err.message)
  }
})

test('anything else is a bug, printed with its stack', () => {
  const bug = new TypeError("cannot read properties of undefined (reading 'x')")
  expect(startFailure(bug)).toBe(bug.stack!)
  expect(startFailure(bug, { named: false })).toBe(bug.stack!)
  expect(startFailure('thrown text')).toBe('thrown text')
})
