import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { connect as tcpConnect } from 'node:net'
import fc from 'fast-check'
import pino from 'pino'
import { closeCodeIn, maskedFrame, upgradeRequest } from '../../core/testing/raw-websocket'
import { mintUserToken } from './auth/mint'
import { startTestNode, type TestNode } from './test-support'

/**
 * Fuzzing the API's inputs on a real node (the real Postgres and NATS, no mocks): random and
 * malformed REST bodies, query strings, path parameters and credentials, and WebSocket frames
 * (text, binary, and text frames that are not UTF-8). Values are built as JSON text, so they
 * carry what JSON.stringify never writes: 1e400, -0, 30-digit integers, duplicate keys,
 * `__proto__` / `constructor` keys, lone surrogates, huge strings, nesting from 1 to 100k levels,
 * invalid UTF-8 bytes. Most cases mutate a valid request (one field replaced, removed, added or
 * repeated) so that they get past the first checks; callers are mostly ones the route accepts.
 * The promises checked:
 *
 * - REST: every answer is a 2xx, or a 4xx whose body is exactly `{ error: { code, message,
 *   details? } }` with a snake_case code. Never a 5xx.
 * - WebSocket: every frame gets an answer; an `error` frame has a code and a message; the
 *   connection still answers afterwards. Only a refused `auth` frame closes it (4001/4003, as
 *   documented), and a frame over the size limit (1009). A text frame that is not UTF-8 closes
 *   that connection (1007, RFC 6455) and nothing else.
 * - Nothing is stored by a refused request: the event stream's message count moves only by the
 *   events acknowledged as new, and board rules and room settings change only on a 200.
 * - The node logs no error (an unexpected exception is logged there), and still answers /healthz.
 *
 * `npm test` runs a short fixed-seed slice; `npm run fuzz:api` runs many more (FANFARE_FUZZ_RUNS,
 * FANFARE_FUZZ_SEED).
 */

const runs = Number(process.env.FANFARE_FUZZ_RUNS ?? 500)
const seed = Number(process.env.FANFARE_FUZZ_SEED ?? 20261204)
/** Replays one failing case: the `path` fast-check printed with it (with the same seed). */
const replayPath = process.env.FANFARE_FUZZ_PATH
const MAX_BODY = 256 * 1024

// ---------------------------------------------------------------------------------------------
// JSON text with what JSON.stringify cannot write.

/** Text spliced in as it is (a number JSON.stringify would not write, a deep nesting). */
class Raw {
  constructor(readonly text: string) {}
}
/** An object as a list of entries: keys may repeat, and `__proto__` is a plain key. */
class Obj {
  constructor(readonly entries: [string, Tree][]) {}
}
type Tree = Raw | Obj | Tree[] | string | boolean | null

function serialize(v: Tree): string {
  if (v instanceof Raw) return v.text
  if (v instanceof Obj) return `{${v.entries.map(([k, x]) => `${JSON.stringify(k)}:${serialize(x)}`).join(',')}}`
  if (Array.isArray(v)) return `[${v.map(serialize).join(',')}]`
  return JSON.stringify(v)
}

const obj = (o: Record<string, Tree>) => new Obj(Object.entries(o))
const deepArrays = (n: number) => new Raw('['.repeat(n) + ']'.repeat(n))
const deepObjects = (n: number) => new Raw('{"a":'.repeat(n) + '0' + '}'.repeat(n))

/** UTF-16 code units, lone surrogates and NUL included. */
const anyString = (maxLength: number) => fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)), maxLength })

const NAMES = ['b', 'r', 'u', '', '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', 'then', 'a b', 'x'.repeat(65)]
const FIELDS = ['id', 'type', 'data', 'events', 'board', 'player', 'score', 'room', 'user', 'text', 'name', 'messageId', 'order', 'operator', 'visibility']
const FRAME_FIELDS = ['op', 'ref', 'channel', 'since', 'epoch', 'token', 'event']
const WORDS = [
  ...NAMES,
  'score.submitted',
  'chat.message.posted',
  'chat.message.deleted',
  'desc',
  'asc',
  'best',
  'latest',
  'sum',
  'public',
  'private',
  'publish',
  'subscribe',
  'unsubscribe',
  'auth',
  'leaderboard:b',
  'chat:r',
  'user:u',
  'leaderboard:__proto__',
  'NaN',
  'Infinity',
  '-0',
  '1e400',
  '0x10',
  ' 1',
  '\u0000',
  '\ud800',
  '\udc00x',
  '😀',
]
const NUMBERS = ['1e400', '-1e400', '-0', '0', '1', '-1', '1.5', '1e-400', '1E+2', '0.0', '1e15', '1e16', '-1e15', '123456789012345678901234567890', '9007199254740993', '4294967296']

const key = fc.oneof(fc.constantFrom(...FIELDS, ...FRAME_FIELDS, ...NAMES), anyString(8))
const leaf: fc.Arbitrary<Tree> = fc.oneof(
  { arbitrary: fc.constantFrom(...WORDS), weight: 6 },
  { arbitrary: anyString(12), weight: 3 },
  { arbitrary: fc.constantFrom(...NUMBERS).map((n) => new Raw(n)), weight: 4 },
  { arbitrary: fc.double().map((n) => new Raw(JSON.stringify(n))), weight: 1 },
  { arbitrary: fc.constantFrom<Tree>(true, false, null), weight: 1 },
  // Huge strings: around the body limit, and past it.
  { arbitrary: fc.integer({ min: 1000, max: MAX_BODY + 10_000 }).map((n) => 'x'.repeat(n)), weight: 1 },
  // Nesting around the depth limit, and far past it (JSON.stringify overflows near 100k levels).
  {
    arbitrary: fc.oneof(fc.integer({ min: 60, max: 70 }).map(deepArrays), fc.integer({ min: 1000, max: 100_000 }).map(deepArrays), fc.integer({ min: 60, max: 20_000 }).map(deepObjects)),
    weight: 1,
  },
)
const { tree } = fc.letrec<{ tree: Tree }>((tie) => ({
  tree: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    leaf,
    fc.array(tie('tree'), { maxLength: 4 }),
    fc.array(fc.tuple(key, tie('tree')), { maxLength: 5 }).map((entries) => new Obj(entries)),
  ),
}))

/** Replaces, removes, adds or repeats one field somewhere in `v` (the path picks a child at each level). */
type Mutation = { path: number[]; op: 'replace' | 'remove' | 'add' | 'repeat'; key: string; value: Tree }
const mutation: fc.Arbitrary<Mutation> = fc.record({
  path: fc.array(fc.nat(), { maxLength: 4 }),
  op: fc.constantFrom('replace', 'remove', 'add', 'repeat'),
  key,
  value: tree,
})
function mutate(v: Tree, m: Mutation, depth = 0): Tree {
  const children = v instanceof Obj ? v.entries.length : Array.isArray(v) ? v.length : 0
  const here = depth >= m.path.length || children === 0
  if (!here) {
    const i = m.path[depth] % children
    if (v instanceof Obj) return new Obj(v.entries.map(([k, x], j) => [k, j === i ? mutate(x, m, depth + 1) : x]))
    return (v as Tree[]).map((x, j) => (j === i ? mutate(x, m, depth + 1) : x))
  }
  if (!(v instanceof Obj)) return m.op === 'replace' || v === null ? m.value : v
  const at = m.path[depth] ?? 0
  const k = v.entries.length > 0 ? v.entries[at % v.entries.length][0] : m.key
  switch (m.op) {
    case 'replace':
      return new Obj(v.entries.map(([x, y]) => [x, x === k ? m.value : y]))
    case 'remove':
      return new Obj(v.entries.filter(([x]) => x !== k))
    case 'add':
      return new Obj([...v.entries, [m.key, m.value]])
    case 'repeat':
      return new Obj([...v.entries, [k, m.value]])
  }
}

/** Bytes of `text`, sometimes with invalid UTF-8 spliced in (lone continuation, overlong, surrogate, truncated). */
const INVALID_UTF8 = [[0xff], [0x80], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xe2, 0x82], [0xf8, 0x88, 0x80, 0x80, 0x80]]
const bytesOf = (text: string, splice: { at: number; bytes: number[] } | null) => {
  const utf8 = new TextEncoder().encode(text)
  if (!splice) return utf8
  const at = splice.at % (utf8.length + 1)
  return new Uint8Array([...utf8.subarray(0, at), ...splice.bytes, ...utf8.subarray(at)])
}
const splice = fc.oneof({ arbitrary: fc.constant(null), weight: 6 }, { arbitrary: fc.record({ at: fc.nat(), bytes: fc.constantFrom(...INVALID_UTF8) }), weight: 1 })

/** A body as text: mostly a mutated valid one (to get past the first checks), else a random value or not JSON at all. */
const bodyText = (valid: Tree[]) =>
  fc.oneof(
    { arbitrary: fc.tuple(fc.constantFrom(...valid), mutation).map(([v, m]) => serialize(mutate(v, m))), weight: 6 },
    { arbitrary: tree.map(serialize), weight: 2 },
    { arbitrary: fc.tuple(fc.constantFrom(...valid), fc.nat()).map(([v, n]) => serialize(v).slice(0, n % serialize(v).length)), weight: 1 },
    { arbitrary: anyString(40), weight: 1 },
  )

/**
 * Percent-encodes every byte of `s`, a lone surrogate as the 3 bytes it would take in UTF-8
 * (ED A0 80 for D800): not valid UTF-8, which is the point (encodeURIComponent refuses them).
 */
function percentEncode(s: string): string {
  const bytes: number[] = []
  for (const ch of s) {
    const c = ch.charCodeAt(0)
    if (ch.length === 1 && c >= 0xd800 && c <= 0xdfff) bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f))
    else bytes.push(...new TextEncoder().encode(ch))
  }
  return bytes.map((b) => (/[A-Za-z0-9_.~-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`)).join('')
}

// ---------------------------------------------------------------------------------------------
// Valid requests to start from.

const score = (board: Tree = 'b') => obj({ type: 'score.submitted', data: obj({ board, player: 'p', score: new Raw('1') }) })
const chat = obj({ type: 'chat.message.posted', data: obj({ room: 'r', text: 'hi' }) })
const validEvents: Tree[] = [
  score(),
  obj({ id: 'fuzz-1', ...Object.fromEntries(score().entries) }),
  chat,
  obj({ type: 'chat.message.deleted', data: obj({ room: 'r', messageId: 'm1' }) }),
  obj({ events: [score(), chat] }),
]
/** The board and room whose settings the REST cases may change; WebSocket cases use other names. */
const RULES_BOARD = 'fuzzrules'
const RULES_ROOM = 'fuzzroom'
const validBoardRules: Tree[] = [obj({ order: 'asc' }), obj({ order: 'desc', operator: 'sum' }), obj({})]
const validRoomSettings: Tree[] = [obj({ visibility: 'private' }), obj({ visibility: 'public' })]

type Who = 'ingest' | 'admin' | 'user' | 'moderator' | 'none' | 'garbage' | 'malformed' | 'alg-none' | 'expired'
const anyone = fc.constantFrom<Who>('ingest', 'admin', 'user', 'moderator', 'none', 'garbage', 'malformed', 'alg-none', 'expired')
/** Mostly a caller the route accepts (to reach its checks), sometimes anyone. */
const who = (...accepted: Who[]) => fc.oneof({ arbitrary: fc.constantFrom(...accepted), weight: 4 }, { arbitrary: anyone, weight: 1 })

/** One REST request. */
type RestCase = {
  method: string
  path: string
  query: string
  who: Who
  contentType: string | null
  body: { text: string; splice: { at: number; bytes: number[] } | null } | null
  /** Which setting a 200 may change. */
  sets?: 'rules' | 'room'
  /** Asks for a WebSocket upgrade it cannot get (no Sec-WebSocket-Key). */
  upgrade?: boolean
}
const pathName = fc.oneof(fc.constantFrom(...NAMES.filter((n) => n !== '')), anyString(6)).map(percentEncode)
const queryString = fc.oneof(
  { arbitrary: fc.constant(''), weight: 2 },
  {
    arbitrary: fc
      .array(fc.tuple(fc.constantFrom('limit', 'offset', 'after', 'before', 'neighbours', 'force', '__proto__', 'token', 'x'), fc.oneof(fc.constantFrom(...NUMBERS, ...WORDS), anyString(6))), {
        minLength: 1,
        maxLength: 3,
      })
      .map((pairs) => '?' + pairs.map(([k, v]) => `${k}=${percentEncode(v)}`).join('&')),
    weight: 3,
  },
  { arbitrary: fc.constantFrom('?limit=%ff', '?limit=%', '?&&=', '?limit[]=1', '?limit=1&limit=2', `?after=${'x'.repeat(600)}`), weight: 1 },
)
/** Routes that take a body take no query: mostly none, to get to the body. */
const noQueryMostly = fc.oneof({ arbitrary: fc.constant(''), weight: 6 }, { arbitrary: queryString, weight: 1 })
const withBody = (valid: Tree[]) => fc.record({ text: bodyText(valid), splice })
const contentType = fc.oneof(
  { arbitrary: fc.constant('application/json'), weight: 6 },
  { arbitrary: fc.constantFrom<string | null>('text/plain', null, 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=latin1'), weight: 1 },
)
const restCase: fc.Arbitrary<RestCase> = fc.oneof(
  fc.record({ method: fc.constant('POST'), path: fc.constant('/v1/events'), query: noQueryMostly, who: who('ingest', 'user', 'moderator'), contentType, body: withBody(validEvents) }),
  fc.record({
    method: fc.constant('PUT'),
    path: fc.constant(`/admin/leaderboards/${RULES_BOARD}`),
    query: noQueryMostly,
    who: who('admin'),
    contentType,
    body: withBody(validBoardRules),
    sets: fc.constant('rules' as const),
  }),
  fc.record({ method: fc.constant('PUT'), path: fc.constant(`/admin/rooms/${RULES_ROOM}`), query: noQueryMostly, who: who('admin'), contentType, body: withBody(validRoomSettings), sets: fc.constant('room' as const) }),
  // A WebSocket upgrade that cannot complete (no key), with any query and credentials.
  fc.record({ method: fc.constant('GET'), path: fc.constant('/v1/ws'), query: queryString, who: anyone, contentType: fc.constant(null), body: fc.constant(null), upgrade: fc.constant(true) }),
  fc.record({
    method: fc.constantFrom('GET', 'POST', 'PUT', 'DELETE'),
    path: fc.oneof(
      pathName.map((b) => `/v1/leaderboards/${b}`),
      fc.tuple(pathName, pathName).map(([b, p]) => `/v1/leaderboards/${b}/players/${p}`),
      pathName.map((r) => `/v1/rooms/${r}/messages`),
      fc.tuple(pathName, pathName).map(([r, id]) => `/admin/rooms/${r}/messages/${id}`),
      pathName.map((n) => `/admin/projections/${n}/rebuild`),
      fc.constantFrom('/admin/dead-letters', '/admin/projections', '/admin/workers', '/healthz', '/readyz', '/v1/events', '/v1/ws'),
    ),
    query: queryString,
    who: who('admin', 'ingest', 'user'),
    contentType,
    body: fc.option(withBody([obj({})]), { freq: 3 }),
    upgrade: fc.boolean(),
  }),
)

// ---------------------------------------------------------------------------------------------
// WebSocket frames.

/** Valid frames for a connection: `token` is its own credential, `other` another user's. */
const validFrames = (token: string, other: string): Tree[] => [
  obj({ op: 'publish', ref: 'p', event: score('wsb') }),
  obj({ op: 'publish', event: obj({ type: 'chat.message.posted', data: obj({ room: 'wsr', text: 'hi' }) }) }),
  obj({ op: 'subscribe', ref: 's', channel: 'leaderboard:wsb' }),
  obj({ op: 'subscribe', channel: 'chat:wsr', since: new Raw('0'), epoch: '' }),
  obj({ op: 'unsubscribe', ref: 'u', channel: 'leaderboard:wsb' }),
  obj({ op: 'auth', ref: 'a', token }),
  obj({ op: 'auth', ref: 'o', token: other }),
]
type Conn = 'ingest' | 'user' | 'anonymous'
type WsCase =
  | { kind: 'text'; conn: Conn; text: string }
  | { kind: 'binary'; conn: Conn; bytes: Uint8Array }
  | { kind: 'not-utf8'; text: string; splice: { at: number; bytes: number[] } }
const wsCase = (tokens: Record<Conn | 'other', string>): fc.Arbitrary<WsCase> => {
  const conn = fc.constantFrom<Conn>('ingest', 'user', 'anonymous')
  return fc.oneof(
    {
      arbitrary: conn.chain((c) => fc.record({ kind: fc.constant('text' as const), conn: fc.constant(c), text: bodyText(validFrames(tokens[c], tokens.other)) })),
      weight: 12,
    },
    { arbitrary: fc.record({ kind: fc.constant('binary' as const), conn, bytes: fc.uint8Array({ maxLength: 64 }) }), weight: 1 },
    {
      arbitrary: fc.record({
        kind: fc.constant('not-utf8' as const),
        text: bodyText(validFrames('x', 'y')).filter((t) => t.length < 1000),
        splice: fc.record({ at: fc.nat(), bytes: fc.constantFrom(...INVALID_UTF8) }),
      }),
      weight: 1,
    },
  )
}

// ---------------------------------------------------------------------------------------------

/** A WebSocket client that keeps every frame and the close. */
class Client {
  frames: any[] = []
  closed?: { code: number; reason: string }
  private constructor(readonly ws: WebSocket) {
    ws.onmessage = (e) => this.frames.push(JSON.parse(String(e.data)))
    ws.onclose = (e) => (this.closed = { code: e.code, reason: e.reason })
  }
  static async open(url: string) {
    const ws = new WebSocket(url)
    await new Promise<void>((ok, fail) => {
      ws.onopen = () => ok()
      ws.onerror = () => fail(new Error(`could not open ${url}`))
    })
    return new Client(ws)
  }
  /** Waits for a frame after the first `seen`, or the close; fails after `ms`. */
  async next(seen: number, what: string, ms = 10_000) {
    const until = Date.now() + ms
    while (this.frames.length <= seen && !this.closed) {
      if (Date.now() > until) throw new Error(`no answer to ${what} within ${ms} ms`)
      await Bun.sleep(1)
    }
    return this.frames[seen] as any
  }
  /** Waits for the server to close the connection; fails after `ms`. */
  async closing(what: string, ms = 5_000) {
    const until = Date.now() + ms
    while (!this.closed) {
      if (Date.now() > until) throw new Error(`${what}: not closed within ${ms} ms`)
      await Bun.sleep(1)
    }
  }
}

/** The op of a text frame as the server reads it (the last of repeated keys), if it is JSON. */
function opOf(payload: string | Uint8Array): unknown {
  try {
    return JSON.parse(typeof payload === 'string' ? payload : new TextDecoder().decode(payload))?.op
  } catch {
    return undefined
  }
}

/** An error body as the API promises it: `{ code, message, details? }`, code in snake_case. */
function expectErrorBody(e: any, where: string) {
  expect([where, typeof e === 'object' && e !== null ? Object.keys(e).filter((k) => !['code', 'message', 'details'].includes(k)) : e]).toEqual([where, []])
  expect([where, typeof e.code === 'string' && /^[a-z][a-z0-9_]*$/.test(e.code), typeof e.message === 'string' && e.message.length > 0]).toEqual([where, true, true])
}

describe('fuzzing the API on a real node', () => {
  let node: TestNode
  let env: TestNode['env']
  let api: TestNode['api']
  let base: string
  const logged: string[] = []
  let stored = 0
  const tokens = {} as Record<Who, string | undefined>
  const headerOf: Partial<Record<Who, string>> = {}

  const streamCount = () => node.streamCount()
  const adminGet = async (path: string) => (await fetch(base + path, { headers: { authorization: `Bearer ${env.vars.FANFARE_ADMIN_TOKEN}` } })).json() as any

  beforeAll(async () => {
    // Garbage credentials are most cases from one address: the budget of failures would answer them
    // all 429 (limits/auth-failures.int.test.ts tests it); here every answer is to be looked at.
    // Likewise every not-UTF-8 case is a new raw connection from this address: past the connect
    // budget (limits/connections.int.test.ts tests it) the upgrade is 429 and no frame is sent at all (found
    // by a 3,000-run fuzz with another seed).
    // Warnings and errors of the node, kept: an unexpected exception is logged as an error.
    const logger = pino({ level: 'warn' }, { write: (line: string) => void logged.push(line) })
    node = await startTestNode(
      { FANFARE_MAX_BODY_BYTES: String(MAX_BODY), FANFARE_AUTH_FAILURES_PER_MINUTE: '1000000', FANFARE_IP_CONNECTS_PER_SECOND: '1000000', FANFARE_IP_CONNECT_BURST: '1000000' },
      { logger },
    )
    env = node.env
    api = node.api
    base = node.base
    const secret = env.vars.FANFARE_JWT_SECRET
    Object.assign(tokens, {
      ingest: env.vars.FANFARE_INGEST_TOKEN,
      admin: env.vars.FANFARE_ADMIN_TOKEN,
      user: await mintUserToken(secret, { sub: 'fuzzer', name: 'Fuzz' }),
      moderator: await mintUserToken(secret, { sub: 'mod', roles: ['moderator'] }),
      none: undefined,
      garbage: 'not-a-token',
      expired: await mintUserToken(secret, { sub: 'late', ttlSeconds: -60 }),
    })
    // Whole Authorization headers, not tokens.
    headerOf.malformed = 'Basic YWRtaW46YWRtaW4='
    headerOf['alg-none'] = `Bearer ${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from('{"sub":"x","exp":9999999999}').toString('base64url')}.`
  })
  afterAll(async () => {
    await node?.close()
  })

  test(
    'REST: every answer is a 2xx or a well-formed 4xx; a refused request stores and changes nothing',
    async () => {
      stored = await streamCount()
      let rules = await adminGet(`/admin/leaderboards/${RULES_BOARD}`)
      let room = await adminGet(`/admin/rooms/${RULES_ROOM}`)
      const send = async (c: RestCase) => {
        const headers: Record<string, string> = {}
        const token = tokens[c.who]
        if (token !== undefined) headers.authorization = `Bearer ${token}`
        if (headerOf[c.who]) headers.authorization = headerOf[c.who]!
        if (c.contentType) headers['content-type'] = c.contentType
        if (c.upgrade) Object.assign(headers, { upgrade: 'websocket', connection: 'Upgrade', 'sec-websocket-version': '13' })
        const res = await fetch(base + c.path + c.query, { method: c.method, headers, body: c.body && c.method !== 'GET' ? bytesOf(c.body.text, c.body.splice) : undefined })
        const text = await res.text()
        const where = `${c.method} ${c.path}${c.query.slice(0, 80)} as ${c.who}: ${res.status} ${text.slice(0, 300)}`
        expect([where, res.status < 500]).toEqual([where, true])
        let json: any
        try {
          json = JSON.parse(text)
        } catch {
          throw new Error(`${where}: the answer is not JSON (${JSON.stringify([...res.headers])})`)
        }
        if (res.status >= 400) {
          expect([where, Object.keys(json)]).toEqual([where, ['error']])
          expectErrorBody(json.error, where)
        } else if (Array.isArray(json.results)) {
          // Events were published (POST /v1/events, a deletion): as many stored as acknowledged new.
          stored += (json.results as { duplicate: boolean }[]).filter((r) => !r.duplicate).length
        }
        if (res.status === 200 && c.sets === 'rules') rules = json
        if (res.status === 200 && c.sets === 'room') room = json
        expect([where, await streamCount()]).toEqual([where, stored])
        if (c.sets === 'rules') expect([where, await adminGet(`/admin/leaderboards/${RULES_BOARD}`)]).toEqual([where, rules])
        if (c.sets === 'room') expect([where, await adminGet(`/admin/rooms/${RULES_ROOM}`)]).toEqual([where, room])
      }
      await fc.assert(fc.asyncProperty(restCase, send), {
        numRuns: runs,
        seed,
        path: replayPath,
        endOnFailure: !process.env.FANFARE_FUZZ_SHRINK,
        // Found by fuzzing, kept as fixed cases: Elysia's validation error stringified a body nested
        // 100k deep (a stack overflow, answered 500).
        examples: [
          [{ method: 'PUT', path: `/admin/leaderboards/${RULES_BOARD}`, query: '', who: 'admin', contentType: 'application/json', body: { text: serialize(obj({ order: deepArrays(100_000) })), splice: null }, sets: 'rules' }],
        ],
      })
      expect(logged).toEqual([])
      expect((await fetch(`${base}/healthz`)).status).toBe(200)
    },
    600_000,
  )

  test(
    'WebSocket: every frame gets an answer, errors carry a code, the connection stays usable, a refused frame stores nothing',
    async () => {
      const wsTokens: Record<Conn | 'other', string> = { ingest: tokens.ingest!, user: tokens.user!, anonymous: '', other: tokens.moderator! }
      const clients = new Map<Conn, Client>()
      const url = (c: Conn) => `ws://127.0.0.1:${api.port}/v1/ws${c === 'anonymous' ? '' : `?token=${wsTokens[c]}`}`
      const client = async (c: Conn) => {
        const open = clients.get(c)
        if (open && !open.closed) return open
        const fresh = await Client.open(url(c))
        clients.set(c, fresh)
        return fresh
      }
      let probes = 0
      const send = async (f: WsCase) => {
        if (f.kind === 'not-utf8') return sendNotUtf8(f.text, f.splice)
        const c = await client(f.conn)
        const payload = f.kind === 'text' ? f.text : f.bytes
        const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.byteLength
        const where = `${f.conn} ${f.kind} ${typeof payload === 'string' ? payload.slice(0, 200) : `[${payload.join(',')}]`}`
        const seen = c.frames.length
        c.ws.send(payload)
        const answer = await c.next(seen, where)
        for (const frame of c.frames.slice(seen)) {
          expect([where, typeof frame.op]).toEqual([where, 'string'])
          if (frame.op === 'error') expectErrorBody(frame.error, `${where} -> ${JSON.stringify(frame).slice(0, 300)}`)
          if (frame.op === 'ack') stored += frame.duplicate ? 0 : 1
        }
        const oversize = size > MAX_BODY
        // A well-formed auth frame that is refused closes the connection right after its error.
        const refusedAuth = !oversize && answer?.op === 'error' && opOf(payload) === 'auth' && !['bad_frame', 'invalid_frame'].includes(answer.error?.code)
        if (refusedAuth) await c.closing(where)
        if (c.closed) {
          // Only an oversize frame (1009) or a refused auth frame (4001/4003) may close it.
          expect([where, c.closed.code, oversize ? c.closed.code === 1009 : refusedAuth && [4001, 4003].includes(c.closed.code)]).toEqual([where, c.closed.code, true])
        } else {
          // Still usable: a probe gets its own answer.
          const ref = `probe-${++probes}`
          const before = c.frames.length
          c.ws.send(JSON.stringify({ op: 'unsubscribe', ref, channel: 'leaderboard:probe' }))
          const until = Date.now() + 10_000
          while (!c.frames.slice(before).some((x) => x.ref === ref)) {
            if (c.closed) throw new Error(`${where}: the connection closed (${JSON.stringify(c.closed)}) after answering ${JSON.stringify(answer)}`)
            if (Date.now() > until) throw new Error(`${where}: the probe got no answer`)
            await Bun.sleep(1)
          }
          expect([where, c.frames.slice(before).find((x) => x.ref === ref)?.op]).toEqual([where, 'unsubscribed'])
        }
        expect([where, await streamCount()]).toEqual([where, stored])
      }
      const sendNotUtf8 = async (text: string, spliced: { at: number; bytes: number[] }) => {
        const closed = await rawTextFrame(api.port, bytesOf(text, spliced))
        expect([text.slice(0, 100), closed]).toEqual([text.slice(0, 100), 1007])
        expect(await streamCount()).toBe(stored)
      }
      stored = await streamCount()
      await fc.assert(fc.asyncProperty(wsCase(wsTokens), send), {
        numRuns: runs,
        seed,
        path: replayPath,
        endOnFailure: !process.env.FANFARE_FUZZ_SHRINK,
        // Found by fuzzing, kept as fixed cases: naming a deeply nested op overflowed the stack and
        // the frame got no answer.
        examples: [[{ kind: 'text', conn: 'ingest', text: serialize(obj({ op: deepArrays(100_000) })) }]],
      })
      for (const c of clients.values()) c.ws.close()
      expect(logged).toEqual([])
      expect((await fetch(`${base}/healthz`)).status).toBe(200)
    },
    600_000,
  )
})

/**
 * Opens a WebSocket over a raw TCP socket and sends one masked text frame with `payload` as it is
 * (a WebSocket client cannot send a text frame that is not UTF-8). Returns the close code the
 * server sent, or 0 if it sent none within 5 s.
 */
async function rawTextFrame(port: number, payload: Uint8Array): Promise<number> {
  const socket = tcpConnect(port, '127.0.0.1')
  const chunks: Buffer[] = []
  socket.on('data', (d: Buffer) => chunks.push(d))
  let ended = false
  socket.on('close', () => (ended = true))
  socket.on('error', () => (ended = true))
  await new Promise((ok) => socket.once('connect', ok))
  socket.write(upgradeRequest(`127.0.0.1:${port}`))
  socket.write(maskedFrame(payload))
  const until = Date.now() + 5_000
  let code = 0
  while (!ended && Date.now() < until) {
    code = closeCodeIn(Buffer.concat(chunks)) ?? 0
    if (code) break
    await Bun.sleep(2)
  }
  socket.destroy()
  return code || (closeCodeIn(Buffer.concat(chunks)) ?? 0)
}

