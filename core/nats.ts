import { DiscardPolicy, jetstreamManager, type JetStreamManager, type MsgRequest, type StreamConfig, type StreamInfo, type StreamSource } from '@nats-io/jetstream'
import { AuthorizationError, connect, ConnectionError, createInbox, headers as natsHeaders, nanos, PermissionViolationError, type NatsConnection } from '@nats-io/transport-node'
import { channelKinds, type ChannelKind } from './channels'
import { parseDomains, type Config } from './config'
import { eventTypes, subjects } from './events'
import { parseNatsServers } from './net'
import { replaySubjects } from './dead-letters'
import { StartFailure } from './start-failure'

/**
 * NATS_URL leads to no server we can use: none answers (refused, unknown host, a timeout) or the
 * server refused the login. The message names NATS_URL, the servers (never the login) and the
 * cause: a process that cannot start for it prints the message alone, not a stack trace.
 */
export class NatsUnreachable extends StartFailure {
  constructor(message: string, cause: unknown) {
    super(message, { cause })
    this.name = 'NatsUnreachable'
  }
}

/**
 * Connects to NATS, reconnecting forever: a NATS restart is an outage, not a crash. `url` is
 * NATS_URL: one server or several comma-separated (a cluster's seed list; the client learns the
 * other servers from the cluster and moves to another one when its server goes away). The first
 * connection failing throws NatsUnreachable.
 */
export async function connectNats(url: string, name: string): Promise<NatsConnection> {
  // noAsyncTraces: otherwise every request (each JetStream publish and ack wait) builds an Error
  // up front for its stack trace, ~6% of an API node's CPU at full ingest. Errors still say what
  // failed; they lose the caller's frames.
  const { servers, login, tls } = parseNatsServers(url)
  try {
    // tls:// asks for encryption, which nats.js gives only with its `tls` option (see parseNatsServers):
    // `{}` verifies the server's certificate against the system's CAs (and NODE_EXTRA_CA_CERTS).
    return await connect({ servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 250, pingInterval: 5000, noAsyncTraces: true, ...login, ...(tls ? { tls: {} } : {}) })
  } catch (err) {
    // nats.js' own message, "server does not support 'tls'", says neither which setting asked for it nor what to do.
    if (tls && err instanceof ConnectionError && /does not support 'tls'/.test(err.message)) {
      throw new NatsUnreachable(
        `NATS_URL asks for TLS (tls://) but the server at ${servers.join(', ')} does not offer it: enable TLS on the server (a tls block in its config), or write nats:// to connect in plain text`,
        err,
      )
    }
    // nats.js' own message says only "Authorization Violation", with no hint of where the login comes from.
    if (err instanceof AuthorizationError) {
      throw new NatsUnreachable(
        `NATS refused the login (${err.message}): ${login ? 'check the user and password (or token) in NATS_URL' : 'the server requires one: give it in NATS_URL as nats://user:password@host:4222 or nats://token@host:4222'}`,
        err,
      )
    }
    // nats.js says only "connection refused" (or a timeout), naming neither the server nor the
    // setting; the servers are printed without their login.
    throw new NatsUnreachable(`cannot reach NATS at NATS_URL (${servers.join(', ')}): ${(err as Error).message}`, err)
  }
}

/** How long a process waits at start for JetStream to answer its requests (see untilJetStreamAnswers). */
export const JETSTREAM_START_WAIT_MS = 60_000

/**
 * Thrown at start when JetStream left the process's requests unanswered for the whole wait: a
 * NATS cluster short of a majority of its servers, or JetStream overloaded. Names NATS_URL's
 * servers (never the login) and what to look at.
 */
export class JetStreamNotAnswering extends StartFailure {
  constructor(url: string, waitMs: number, cause: unknown) {
    super(
      `JetStream at NATS_URL${url ? ` (${parseNatsServers(url).servers.join(', ')})` : ''} did not answer for ${Math.round(waitMs / 1000)} s: ` +
        `on a cluster, check that a majority of its servers is up and routed to each other (a stream without a majority has no leader)`,
      { cause },
    )
    this.name = 'JetStreamNotAnswering'
  }
}

/**
 * A JetStream request left unanswered (a timeout), or answered "JetStream system temporarily
 * unavailable" (10008, while a cluster's meta group has no leader, e.g. as servers come back).
 */
function jetStreamElecting(err: unknown): boolean {
  const e = err as { name?: string; code?: number }
  return e?.name === 'TimeoutError' || (e?.name === 'JetStreamApiError' && e.code === 10008)
}

/**
 * Runs a process's JetStream steps at start (ensuring the streams, reading their settings, opening
 * the buckets) again while JetStream leaves a request unanswered. On a cluster a stream, or the
 * meta group, whose leader's server just died answers nothing until its followers elect another
 * (4-9 s in nats-server 2.9, more on a loaded machine), and nothing at all while a majority of its
 * servers is down, then "temporarily unavailable" while the servers come back: an API node, a
 * worker or `npm run migrate` started then used to exit at once with a bare "TimeoutError:
 * timeout" (the upgrade command with a stack trace). The steps must be safe to run again (they
 * create what is missing and read). Each retry is logged with `warn`; after `waitMs`
 * JetStreamNotAnswering is thrown. Other errors are thrown at once.
 */
export async function untilJetStreamAnswers<T>(steps: () => Promise<T>, opts: { url: string; warn: (message: string) => void; waitMs?: number }): Promise<T> {
  const waitMs = opts.waitMs ?? JETSTREAM_START_WAIT_MS
  const deadline = Date.now() + waitMs
  for (let attempt = 1; ; attempt++) {
    try {
      return await steps()
    } catch (err) {
      if (!jetStreamElecting(err)) throw err
      if (Date.now() >= deadline) throw new JetStreamNotAnswering(opts.url, waitMs, err)
      opts.warn(`JetStream did not answer in time (${(err as Error).message}: a NATS cluster electing a leader, or short of a majority of its servers?): trying again (attempt ${attempt + 1})`)
      await new Promise((r) => setTimeout(r, 1000))
    }
  }
}

/** Names of the streams and buckets one Fanfare deployment uses, derived from its config. */
export type Topology = {
  /** Events, subjects `<prefix>.ev.<partition>.<type>`. */
  eventStream: string
  /**
   * Change notices (channel history), one stream per channel kind so each kind has its own
   * retention; subjects `<prefix>.changes.<kind>.<name>`.
   */
  changeStreams: Record<ChannelKind, string>
  /** KV bucket of worker partition leases. */
  leaseBucket: string
  /** KV bucket of admin jobs (projection rebuilds), see core/rebuild-jobs.ts. */
  jobBucket: string
  prefix: string
  partitions: number
}

export function topology(config: Config): Topology {
  return {
    eventStream: config.FANFARE_STREAM,
    changeStreams: {
      leaderboard: `${config.FANFARE_STREAM}_CHANGES_LEADERBOARD`,
      chat: `${config.FANFARE_STREAM}_CHANGES_CHAT`,
      user: `${config.FANFARE_STREAM}_CHANGES_USER`,
      stream: `${config.FANFARE_STREAM}_CHANGES_STREAM`,
      poll: `${config.FANFARE_STREAM}_CHANGES_POLL`,
      reactions: `${config.FANFARE_STREAM}_CHANGES_REACTIONS`,
      match: `${config.FANFARE_STREAM}_CHANGES_MATCH`,
    },
    leaseBucket: `${config.FANFARE_STREAM}_leases`,
    jobBucket: `${config.FANFARE_STREAM}_jobs`,
    prefix: config.FANFARE_SUBJECT_PREFIX,
    partitions: config.FANFARE_PARTITIONS,
  }
}

/** Every JetStream stream of a deployment: the event stream, the change streams, and the buckets' streams. */
export function deploymentStreams(t: Topology): string[] {
  return [t.eventStream, ...Object.values(t.changeStreams), `KV_${t.leaseBucket}`, `KV_${t.jobBucket}`]
}

/**
 * Built-in retention of kinds whose channels change often and whose snapshot is one small row: a
 * stream's channel changes up to once a second (viewer samples), a poll's once per batch while
 * votes come in. 300 runs still cover five minutes of a stream's changes (a reconnect resumes from
 * history); older gaps cost one cheap resync snapshot, not a day of per-second history per channel.
 */
const kindDefaults: Partial<Record<ChannelKind, { size: number; ttlMs: number }>> = {
  stream: { size: 300, ttlMs: 3600_000 },
  poll: { size: 300, ttlMs: 3600_000 },
}

/** The kinds with history variables of their own: `FANFARE_HISTORY_SIZE_<KIND>`, `FANFARE_HISTORY_TTL_MS_<KIND>`. */
const ownHistory = { leaderboard: 'LEADERBOARD', chat: 'CHAT', stream: 'STREAM', poll: 'POLL', reactions: 'REACTIONS' } as const

/** The variables that set a kind's history: its own (see ownHistory), else the general ones. */
export function historyVariables(kind: ChannelKind) {
  const suffix = (ownHistory as Partial<Record<ChannelKind, (typeof ownHistory)[keyof typeof ownHistory]>>)[kind]
  return suffix
    ? { own: true, size: `FANFARE_HISTORY_SIZE_${suffix}` as const, ttlMs: `FANFARE_HISTORY_TTL_MS_${suffix}` as const }
    : { own: false, size: 'FANFARE_HISTORY_SIZE' as const, ttlMs: 'FANFARE_HISTORY_TTL_MS' as const }
}

/**
 * How many change runs (messages of one or more changes) a channel of this kind keeps, and for how
 * long: the kind's own variable (`FANFARE_HISTORY_SIZE_<KIND>`, `FANFARE_HISTORY_TTL_MS_<KIND>`),
 * else the kind's built-in default (see kindDefaults), else FANFARE_HISTORY_SIZE / _TTL_MS.
 */
export function historyRetention(config: Config, kind: ChannelKind): { size: number; ttlMs: number } {
  const v = historyVariables(kind)
  const [size, ttlMs] = v.own ? [config[v.size], config[v.ttlMs]] : [undefined, undefined]
  return { size: size ?? kindDefaults[kind]?.size ?? config.FANFARE_HISTORY_SIZE, ttlMs: ttlMs ?? kindDefaults[kind]?.ttlMs ?? config.FANFARE_HISTORY_TTL_MS }
}

/**
 * Which incarnation of a stream this is: `<name>@<created>`. A stream deleted and created again
 * (NATS lost its data, an operator removed it) has a new one, and its sequences restart at 1.
 *
 * `<created>` is the creation time recorded in the stream's description (`incarnation=`, written
 * when the stream is created, and kept by every update; see upsertStream), not the server's
 * `created`: nats-server 2.9 reports after a restart the time it loaded the stream instead, so
 * an intact stream looked recreated and workers applied all of it again. A stream of an older
 * version records none until `npm run migrate` records the identity its checkpoints hold.
 */
export async function streamIdentity(jsm: JetStreamManager, stream: string): Promise<string> {
  return identityOf(await jsm.streams.info(stream))
}

/** The identity (see streamIdentity) of a stream whose info was read. */
export const identityOf = (info: StreamInfo): string => `${info.config.name}@${incarnationOf(info.config.description) ?? info.created}`

/** The stream's name in an identity (see streamIdentity): what precedes its last `@`. */
export const streamNameOf = (identity: string): string => identity.replace(/@[^@]*$/, '')

/** The creation time a stream's description records (see streamIdentity), if it has one. */
export const incarnationOf = (description: string | undefined): string | undefined => /(?:^|; )incarnation=([^;]+)/.exec(description ?? '')?.[1]
/** `description` with the creation time `incarnation` recorded in it. */
export const withIncarnation = (description: string | undefined, incarnation: string): string =>
  `${description ? `${description}; ` : ''}incarnation=${incarnation}`

/**
 * How a deployment's workers publish change runs (its change format), as each change stream
 * records it in its description (nats-server 2.9 has no stream metadata):
 * - `runs`, nothing recorded: one message per channel run on the channel's subject (what every
 *   Fanfare before live batches did);
 * - `batches` (`changes=batches`): live batches, one message per worker batch and kind
 *   (core/live-batches.ts), channel history in Postgres;
 * - `compressed` (also `batches=zstd`): live batches, those long enough compressed with zstd
 *   (encodeLiveBatch).
 * Change streams are created with the latest format; a deployment of an older version switches
 * with `npm run migrate -- --live-batches` once no API node of that version follows its change
 * streams (an older node cannot read a newer format: its subscribers would miss updates silently).
 * Workers publish as the streams say, and notice a switch while running (see watchChangeFormat);
 * API nodes read every format (runsOfData) and history from both places.
 */
export type ChangeFormat = 'runs' | 'batches' | 'compressed'
/** The format this version's workers publish once recorded, and new change streams record. */
export const LATEST_CHANGE_FORMAT: ChangeFormat = 'compressed'
const FORMATS: ChangeFormat[] = ['runs', 'batches', 'compressed']
const FORMAT_TOKENS: Record<ChangeFormat, string[]> = { runs: [], batches: ['changes=batches'], compressed: ['changes=batches', 'batches=zstd'] }
const tokensOf = (description: string | undefined) => (description ?? '').split('; ')
/** The change format a change stream's description records. */
export const changeFormatOf = (description: string | undefined): ChangeFormat => {
  const tokens = tokensOf(description)
  return [...FORMATS].reverse().find((f) => FORMAT_TOKENS[f].every((t) => tokens.includes(t))) ?? 'runs'
}
/** `description` recording `format` instead of the one it records. */
const withChangeFormat = (description: string | undefined, format: ChangeFormat): string => {
  const all = new Set(Object.values(FORMAT_TOKENS).flat())
  return [...tokensOf(description).filter((t) => t !== '' && !all.has(t)), ...FORMAT_TOKENS[format]].join('; ')
}

/**
 * The change format of the deployment: the least any of its change streams records (a switch cut
 * short records some streams only; workers publish what every API node reads).
 */
export async function changeFormatRecorded(jsm: JetStreamManager, config: Config): Promise<ChangeFormat> {
  const t = topology(config)
  const infos = await Promise.all(channelKinds.map((kind) => jsm.streams.info(t.changeStreams[kind])))
  return leastFormat(infos.map((i) => changeFormatOf(i.config.description)))
}
/** The least of `formats` (see changeFormatRecorded). */
export const leastFormat = (formats: ChangeFormat[]): ChangeFormat => FORMATS[Math.min(...formats.map((f) => FORMATS.indexOf(f)))]

/** The description an API node's change feed gives its consumers: the formats it reads (see recordChangeFormat). */
export const FEED_CONSUMER_DESCRIPTION = 'fanfare change feed; takes live batches; takes compressed batches'

/**
 * The change format a consumer of a change stream reads, by its description: a change feed of
 * this version or an earlier one says what it takes (FEED_CONSUMER_DESCRIPTION of its version:
 * live batches since c16ef94, compressed ones since 6d26f8e). Undefined for any other consumer (a
 * history read's, or an API node's from before live batches, whose feeds said nothing: the
 * switch to live batches refuses while one is there, see recordChangeFormat).
 */
export const formatReadBy = (description: string | undefined): ChangeFormat | undefined => {
  const tokens = tokensOf(description)
  if (tokens[0] !== 'fanfare change feed') return undefined
  return tokens.includes('takes compressed batches') ? 'compressed' : tokens.includes('takes live batches') ? 'batches' : 'runs'
}

/**
 * The least change format the change feeds following the deployment's change streams on `jsm`
 * read (see formatReadBy); undefined when no change feed follows them there. A stream not found
 * (an edge that never started) has none.
 */
export async function formatFollowed(jsm: JetStreamManager, config: Config): Promise<ChangeFormat | undefined> {
  const t = topology(config)
  const formats: ChangeFormat[] = []
  await Promise.all(
    channelKinds.map(async (kind) => {
      try {
        for await (const c of jsm.consumers.list(t.changeStreams[kind])) {
          const format = formatReadBy(c.config.description)
          if (format) formats.push(format)
        }
      } catch (err) {
        if (!isNotFound(err)) throw err
      }
    }),
  )
  return formats.length > 0 ? leastFormat(formats) : undefined
}

/**
 * Thrown by recordChangeFormat when a change stream has a consumer that is not a change feed of a
 * version that reads the latest format: most likely an API node of an older Fanfare still running.
 */
export class OlderNodesFollowing extends StartFailure {
  constructor(readonly consumers: string[]) {
    super(
      `not switched to compressed live batches: ${consumers.length} consumer${consumers.length === 1 ? '' : 's'} of the change streams ${consumers.length === 1 ? 'is' : 'are'} not a change feed that reads them (${consumers.slice(0, 5).join(', ')}${consumers.length > 5 ? ', ...' : ''}): ` +
        'API nodes of an older Fanfare would miss every update. Upgrade every API node first, then run it again',
    )
    this.name = 'OlderNodesFollowing'
  }
}

/**
 * The switch to the latest change format (`npm run migrate -- --live-batches`, with the hub's
 * config): records it on every change stream that does not yet, once no consumer of them, or of an
 * edge site's mirrors of them (FANFARE_EDGE_DOMAINS, asked across the leaf link), is other than a
 * change feed of this version (FEED_CONSUMER_DESCRIPTION): OlderNodesFollowing otherwise, or the
 * error of an edge that does not answer (its nodes cannot be known). Short-lived consumers (a
 * history read's) are waited out for `settleMs`. Returns the streams switched. Workers follow
 * within their watch interval.
 */
export async function recordChangeFormat(nc: NatsConnection, config: Config, opts: { settleMs?: number; alone?: boolean } = {}): Promise<string[]> {
  const site = siteOf(config)
  if (site.kind === 'edge') throw new StartFailure('the switch to live batches is made at the hub: run it with the hub\'s config (FANFARE_EDGE_DOMAINS, not FANFARE_EDGE_DOMAIN)')
  const t = topology(config)
  const names = channelKinds.map((kind) => t.changeStreams[kind])
  const managers = [
    { where: '', jsm: await jetstreamManager(nc) },
    ...(await Promise.all(
      (site.edges ?? []).map(async (domain) => ({
        where: `${domain}:`,
        jsm: await jetstreamManager(nc, { domain }).catch((err) => {
          throw new StartFailure(`not switched to live batches: edge site ${domain} does not answer (${(err as Error).message}), so its API nodes cannot be checked: run it again once its link is up`)
        }),
      })),
    )),
  ]
  const strangers = async () => {
    const out: string[] = []
    for (const { where, jsm } of managers) {
      for (const stream of names) {
        try {
          for await (const c of jsm.consumers.list(stream)) if (c.config.description !== FEED_CONSUMER_DESCRIPTION) out.push(`${where}${stream}/${c.name}`)
        } catch (err) {
          // An edge that never started has no mirror: nobody follows it.
          if (!isNotFound(err)) throw err
        }
      }
    }
    return out
  }
  const deadline = Date.now() + (opts.settleMs ?? 5_000)
  // `alone`: the caller is the whole deployment (npm start), so nothing else follows the streams
  // (a consumer left by its previous run is not a node).
  let left = opts.alone ? [] : await strangers()
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250))
    left = await strangers()
  }
  if (left.length > 0) throw new OlderNodesFollowing(left)
  const jsm = managers[0].jsm
  const switched: string[] = []
  for (const stream of names) {
    const info = await jsm.streams.info(stream)
    if (changeFormatOf(info.config.description) === LATEST_CHANGE_FORMAT) continue
    await jsm.streams.update(stream, { ...info.config, description: withChangeFormat(info.config.description, LATEST_CHANGE_FORMAT) })
    switched.push(stream)
  }
  return switched
}

/**
 * A STREAM.MSG.GET request for the first stored message at or after `seq` on `filter` (wildcards
 * allowed). nats-server 2.9 takes `next_by_subj`; the client's type only lists it for direct gets
 * (which need `allow_direct` on the stream), but passes the request through as is and answers null
 * when there is none.
 */
export const nextBySubject = (filter: string, seq: number) => ({ seq, next_by_subj: filter }) as unknown as MsgRequest

/**
 * The one change stream of deployments from before per-kind change streams. Its subjects overlap
 * the per-kind streams', so the two cannot coexist: `npm run migrate` removes it (see
 * core/upgrade.ts); nodes never do.
 */
export const legacyChangeStream = (config: Config): string => `${config.FANFARE_STREAM}_CHANGES`

/**
 * Thrown at start when NATS still holds what an older Fanfare left and this version cannot run
 * beside it: the operator runs `npm run migrate` (the upgrade command), which a node never does
 * by itself (in a rolling upgrade that would pull streams from under the older nodes still running).
 */
export class UpgradeRequired extends StartFailure {
  constructor(message: string) {
    super(`${message}: run \`npm run migrate\` of this version (it upgrades the NATS topology), then start this node again`)
    this.name = 'UpgradeRequired'
  }
}

/**
 * Where a node runs (see README "Running at the edge"): at the hub, whose event stream sources the
 * event streams of `edges` (JetStream domains), or at an edge site, in JetStream domain `domain`,
 * linked to the hub's domain `hubDomain` by a leaf nats-server.
 */
export type Site = { kind: 'hub'; edges?: string[] } | { kind: 'edge'; domain: string; hubDomain: string }

export function siteOf(config: Config): Site {
  if (config.FANFARE_EDGE_DOMAIN) return { kind: 'edge', domain: config.FANFARE_EDGE_DOMAIN, hubDomain: config.FANFARE_HUB_DOMAIN }
  // Unset: leave the stream's sources alone (a hub process started without the list removes none).
  return { kind: 'hub', ...(config.FANFARE_EDGE_DOMAINS ? { edges: parseDomains(config.FANFARE_EDGE_DOMAINS).domains } : {}) }
}

/** Stream `name` of JetStream domain `domain`, reached across a leaf link, as a source or mirror. */
const inDomain = (name: string, domain: string): StreamSource => ({ name, external: { api: `$JS.${domain}.API`, deliver: '' } })

/**
 * The subjects a process publishes to, one per kind of message (an API node: the event subject of
 * each event type, and its broadcasts to the other nodes: `<prefix>.control.*` (revocations, room
 * visibility) and `<prefix>.presence.*`; a worker also each change stream's, for change runs, and
 * the event subjects for the events it emits), and the patterns that cover them. Permissions are
 * per subject: a user may lack some of them only. Subjects other processes listen on are probed
 * through a sibling nobody listens on (`permission-check`), so the probe reaches no subscriber.
 */
function publishSubjects(t: Topology, role: 'api' | 'worker'): { probes: string[]; patterns: string[] } {
  const events = eventTypes.map((type) => subjects.event(t.prefix, 0, type))
  if (role === 'api') {
    // A denied broadcast is dropped as silently as an event: a revocation or a room made private
    // would then reach no other node, whose sockets would keep what they may no longer have.
    const broadcasts = ['control', 'presence'].map((area) => `${t.prefix}.${area}.permission-check`)
    return { probes: [...events, ...broadcasts], patterns: [subjects.allEvents(t.prefix), `${t.prefix}.control.>`, `${t.prefix}.presence.>`] }
  }
  const changes = channelKinds.map((kind) => `${subjects.changesOfKind(t.prefix, kind).slice(0, -1)}permission-check`)
  return { probes: [...events, ...changes], patterns: [subjects.allEvents(t.prefix), `${t.prefix}.changes.>`] }
}

/**
 * Refuses to start when the NATS user may not publish to a subject this process publishes to:
 * nats-server drops such a publish and only tells the connection afterwards, so ingest would wait
 * out its publish timeout on every such event (then 503), and a worker's change runs would never
 * reach subscribers while its read models advance. Each subject is probed with a message JetStream
 * refuses without storing it (a Nats-Expected-Stream no stream has): JetStream's refusal means the
 * publish got through; a permissions violation is collected. Before the streams exist (a worker
 * checks before it ensures them) a permitted probe is answered "no responders": not a refusal.
 */
export async function checkPublishPermissions(nc: NatsConnection, t: Topology, role: 'api' | 'worker', timeoutMs = 5000): Promise<void> {
  const { probes, patterns } = publishSubjects(t, role)
  const h = natsHeaders()
  h.set('Nats-Expected-Stream', '-fanfare-permission-check-')
  const denied: string[] = []
  await Promise.all(
    probes.map(async (subject) => {
      try {
        await nc.request(subject, '', { headers: h, timeout: timeoutMs })
      } catch (err) {
        // Other failures (a timeout, NATS away) are not about permissions: the process goes on.
        if (/permissions violation/i.test(String((err as Error)?.message ?? err))) denied.push(subject)
      }
    }),
  )
  if (denied.length > 0) {
    throw new Error(
      `the NATS user in NATS_URL may not publish to ${denied.sort().join(', ')} (Permissions Violation): ` +
        `grant it publish on ${patterns.join(' and ')} in the nats-server config`,
    )
  }
}

/** Prefix of JetStream's consumer-deleted advisories: `<prefix>.<stream>.<consumer>`. */
export const CONSUMER_DELETED = '$JS.EVENT.ADVISORY.CONSUMER.DELETED'

/**
 * The subjects a process subscribes to with core NATS subscriptions, and the patterns that cover
 * them. Both roles: an inbox (`_INBOX.<id>.>`: JetStream publish acknowledgements, requests'
 * replies, pull consumers' deliveries). An API node also: `<prefix>.control.revocations` and
 * `<prefix>.control.rooms` (other nodes' revocations and room visibility changes),
 * `<prefix>.presence.node` and `<prefix>.presence.want`, `<prefix>.admin.nodes` (node stats
 * queries), and each change stream's consumer-deleted advisory (`$JS.EVENT.ADVISORY.CONSUMER.
 * DELETED.<stream>.<consumer>`, probed with a consumer name no consumer has). A worker:
 * `<prefix>.admin.replay.*.*` (dead-letter replays). Not probed: a worker's `<prefix>.admin.lag`
 * (GET /admin/projections' lag queries), which it may serve without (its lag is shown as unknown).
 */
function subscribeSubjects(t: Topology, role: 'api' | 'worker'): { probes: string[]; patterns: string[] } {
  const inbox = `${createInbox()}.>`
  if (role === 'worker') return { probes: [inbox, replaySubjects(t.prefix)], patterns: ['_INBOX.>', `${t.prefix}.admin.replay.>`] }
  const advisories = Object.values(t.changeStreams).map((stream) => `${CONSUMER_DELETED}.${stream}.permission-check`)
  return {
    probes: [
      inbox,
      `${t.prefix}.control.revocations`,
      `${t.prefix}.control.rooms`,
      `${t.prefix}.presence.node`,
      `${t.prefix}.presence.want`,
      `${t.prefix}.admin.nodes`,
      ...advisories,
    ],
    patterns: ['_INBOX.>', `${t.prefix}.control.>`, `${t.prefix}.presence.>`, `${t.prefix}.admin.>`, `${CONSUMER_DELETED}.>`],
  }
}

/**
 * Refuses to start when the NATS user may not subscribe to a subject this process subscribes to:
 * nats-server refuses such a subscription only with an asynchronous error, so an API node denied
 * `<prefix>.control.>` would be ready and silently miss other nodes' revocations and room changes
 * (its sockets keeping what they lost), and one denied the advisories would see every change feed
 * "lost" and resync forever. Each subject is subscribed to, the connection flushed (nats-server
 * answers a SUB in order, so its refusal arrives before the flush's PONG), and unsubscribed; a
 * subscription the server refused was ended with a PermissionViolationError.
 */
export async function checkSubscribePermissions(nc: NatsConnection, t: Topology, role: 'api' | 'worker'): Promise<void> {
  const { probes, patterns } = subscribeSubjects(t, role)
  const denied: string[] = []
  const subs = probes.map((subject) =>
    nc.subscribe(subject, {
      callback: (err) => {
        if (err instanceof PermissionViolationError) denied.push(subject)
      },
    }),
  )
  try {
    await nc.flush()
  } finally {
    for (const sub of subs) if (!sub.isClosed()) sub.unsubscribe()
  }
  if (denied.length > 0) {
    throw new Error(
      `the NATS user in NATS_URL may not subscribe to ${denied.sort().join(', ')} (Permissions Violation): ` +
        `grant it subscribe on ${patterns.join(' and ')} in the nats-server config`,
    )
  }
}

/**
 * The smallest max_payload Fanfare can run with: nats-server's default, 1 MiB. A worker publishes a
 * batch's changes in runs of up to 256 Ki UTF-16 units (up to ~768 KiB of UTF-8, see
 * stream-workers/src/runtime/outbox.ts) and the largest event a client may send (a stream's
 * viewers with 5,000 users) is a few hundred KB. Below it, publishes over the limit are refused by
 * the client on every try: the read models advance while subscribers get no update, and such an
 * event is never stored.
 */
export const MIN_MAX_PAYLOAD = 1024 * 1024

/**
 * Thrown at start when the NATS server's max_payload is below MIN_MAX_PAYLOAD: better than
 * running with live updates silently stopped (see MIN_MAX_PAYLOAD).
 */
export class MaxPayloadTooSmall extends StartFailure {
  constructor(server: string, maxPayload: number) {
    super(
      `the NATS server ${server}'s max_payload is ${maxPayload} bytes; Fanfare needs at least ${MIN_MAX_PAYLOAD} (1 MB, the nats-server default): ` +
        `raise max_payload in the nats-server config (every server of the cluster), or remove the setting`,
    )
    this.name = 'MaxPayloadTooSmall'
  }
}

/**
 * Thrown at start when FANFARE_REPLICAS is above 1 but the NATS server is not part of a cluster: an
 * operator's mistake, said in one line (it used to come with a stack trace, as a bug does).
 */
export class ReplicasWithoutCluster extends StartFailure {
  constructor(replicas: number, server: string) {
    super(
      `FANFARE_REPLICAS is ${replicas} but the NATS server ${server} is not part of a cluster: ` +
        `set FANFARE_REPLICAS=1, or point NATS_URL at a cluster of at least ${replicas} servers (README "Running on a NATS cluster")`,
    )
    this.name = 'ReplicasWithoutCluster'
  }
}

/**
 * Creates the event and change streams that are missing, with the config's settings (retention,
 * dedup window, history, FANFARE_REPLICAS, the hub's sources). Existing streams are checked (the
 * partition count, the subject prefix) but their settings are left as they are, unless `apply`:
 * the streams are shared, so one writer changes them, `npm run migrate` (core/upgrade.ts). Nodes
 * started with other values would otherwise each rewrite them at start, and the nodes not
 * restarted would tell clients settings the streams no longer have; a node uses the streams'
 * settings instead (see readStreamSettings). Safe to call from every process at start,
 * concurrently. Never deletes anything: one-off upgrade steps belong to `npm run migrate`. A
 * stream of an older version that blocks this one is an UpgradeRequired error.
 *
 * At an edge site (see Site) the same names live in the edge's own JetStream domain: an event
 * stream on the same subjects (what the edge's API nodes store into, the hub's event stream sources
 * it), and mirrors of the hub's change streams (what the edge's change feeds and history read).
 */
export async function ensureStreams(nc: NatsConnection, config: Config, opts: { apply?: boolean; changes?: ChangeFormat } = {}): Promise<JetStreamManager> {
  // nats-server refuses a new stream of several replicas on a server outside a cluster, but takes
  // the update of an existing one (its info then says 3 replicas while one copy exists): refuse both.
  if (config.FANFARE_REPLICAS > 1 && !nc.info?.cluster) throw new ReplicasWithoutCluster(config.FANFARE_REPLICAS, nc.info?.server_name ?? '')
  const maxPayload = nc.info?.max_payload
  if (maxPayload !== undefined && maxPayload < MIN_MAX_PAYLOAD) throw new MaxPayloadTooSmall(nc.info?.server_name ?? '', maxPayload)
  const jsm = await jetstreamManager(nc)
  const t = topology(config)
  const num_replicas = config.FANFARE_REPLICAS
  const site = siteOf(config)
  const apply = opts.apply ?? false
  await upsertStream(
    jsm,
    apply,
    {
      name: t.eventStream,
      description: partitionsDescription(t.partitions),
      subjects: [subjects.allEvents(t.prefix)],
      duplicate_window: nanos(config.FANFARE_DEDUP_WINDOW_MS),
      max_age: nanos(config.FANFARE_EVENT_RETENTION_MS),
      // A cap an operator sets (max_msgs, max_bytes) then refuses new events (503 storage_full)
      // instead of deleting the oldest, which may be acknowledged events no worker applied yet.
      discard: DiscardPolicy.New,
      num_replicas,
      ...(site.kind === 'hub' && site.edges ? { sources: site.edges.map((d) => inDomain(t.eventStream, d)) } : {}),
    },
    checkEventStream(t),
  ).catch(async (err) => {
    // Only on failure: another stream takes the event subjects, most likely this deployment's own
    // under the name FANFARE_STREAM should have had (nats-server just says "subjects overlap").
    if (!String(err).includes('subjects overlap')) throw err
    const owner = await jsm.streams.find(subjects.allEvents(t.prefix)).catch(() => undefined)
    throw owner && owner !== t.eventStream ? new EventSubjectsTaken(t.eventStream, owner, subjects.allEvents(t.prefix)) : err
  })
  for (const kind of channelKinds) {
    const { size, ttlMs } = historyRetention(config, kind)
    if (site.kind === 'edge') {
      await upsertStream(jsm, apply, { name: t.changeStreams[kind], mirror: inDomain(t.changeStreams[kind], site.hubDomain), max_msgs_per_subject: size, max_age: nanos(ttlMs), num_replicas })
      continue
    }
    await upsertStream(
      jsm,
      apply,
      {
        name: t.changeStreams[kind],
        subjects: [subjects.changesOfKind(t.prefix, kind)],
        max_msgs_per_subject: size,
        max_age: nanos(ttlMs),
        duplicate_window: nanos(Math.min(120_000, ttlMs)),
        num_replicas,
      },
      undefined,
      // A new deployment's change streams record the latest format (see ChangeFormat) unless told
      // otherwise (tests of a deployment of an older version).
      withChangeFormat(undefined, opts.changes ?? LATEST_CHANGE_FORMAT) || undefined,
    ).catch(async (err) => {
      // Only on failure: the common start pays no extra request for the check.
      if (await streamExists(jsm, legacyChangeStream(config))) {
        throw new UpgradeRequired(`NATS still has ${legacyChangeStream(config)}, the change stream of an older Fanfare, whose subjects overlap ${t.changeStreams[kind]}`)
      }
      throw err
    })
  }
  return jsm
}

/**
 * Thrown at start when FANFARE_PARTITIONS differs from the count the event stream was created
 * with. Keys hash to `hash % partitions`, so another count moves them: a key's events still waiting
 * in its old partition would race its new ones (per-key order lost), and with fewer partitions the
 * events of the partitions above the count would never be applied.
 */
export class PartitionsChanged extends StartFailure {
  constructor(stream: string, recorded: number, configured: number) {
    super(
      `stream ${stream} has ${recorded} partitions but FANFARE_PARTITIONS is ${configured}: the count is fixed for the life of a stream (keys would move to other partitions). ` +
        `Set FANFARE_PARTITIONS=${recorded} on every process, or start a new deployment (another FANFARE_STREAM, FANFARE_SUBJECT_PREFIX and database)`,
    )
    this.name = 'PartitionsChanged'
  }
}

/**
 * The event stream records its partition count in its description (nats-server 2.9 has no stream
 * metadata), written by every process that ensures the streams and checked before.
 */
const partitionsDescription = (partitions: number) => `Fanfare events; partitions=${partitions}`
const recordedPartitions = (description: string | undefined): number | undefined => {
  const m = /partitions=(\d+)/.exec(description ?? '')
  return m ? Number(m[1]) : undefined
}

/**
 * Thrown at start when FANFARE_SUBJECT_PREFIX differs from the one the existing event stream takes
 * events on. Ensuring the stream would move it to the new subjects: API nodes still on the old
 * prefix could no longer store events, and events stored under the new prefix would be skipped by
 * workers on the old one (their consumers filter by prefix) once the mistake is undone.
 */
export class SubjectPrefixChanged extends StartFailure {
  constructor(stream: string, subjects: string[], prefix: string) {
    super(
      `stream ${stream} takes events on ${subjects.join(', ')} but FANFARE_SUBJECT_PREFIX is ${prefix}: ` +
        `set FANFARE_SUBJECT_PREFIX to the deployment's prefix on every process, or give another deployment its own FANFARE_STREAM`,
    )
    this.name = 'SubjectPrefixChanged'
  }
}

/**
 * Thrown at start when the event subjects (`<FANFARE_SUBJECT_PREFIX>.ev.>`) belong to a stream of
 * another name than FANFARE_STREAM: a typo in FANFARE_STREAM, or two deployments on one prefix.
 */
export class EventSubjectsTaken extends StartFailure {
  constructor(stream: string, owner: string, subject: string) {
    super(
      `FANFARE_STREAM is ${stream} but stream ${owner} already takes the events on ${subject}: ` +
        `set FANFARE_STREAM=${owner} on every process, or give another deployment its own FANFARE_SUBJECT_PREFIX`,
    )
    this.name = 'EventSubjectsTaken'
  }
}

/**
 * Refuses a config that would move an existing event stream's keys or subjects: a partition count
 * other than the one it records (a stream of a version that did not record it takes the configured
 * count), or another subject prefix. Checked on the stream as found before it is updated, and so
 * also on the stream another process created meanwhile (two processes starting at once on a new
 * stream with different counts: the one whose create lost is refused).
 */
function checkEventStream(t: Topology): (existing: StreamConfig) => void {
  return (config) => {
    const recorded = recordedPartitions(config.description)
    if (recorded !== undefined && recorded !== t.partitions) throw new PartitionsChanged(t.eventStream, recorded, t.partitions)
    // A mirror (no subjects of its own) is not checked here.
    const own = config.subjects ?? []
    if (own.length > 0 && !(own.length === 1 && own[0] === subjects.allEvents(t.prefix))) throw new SubjectPrefixChanged(t.eventStream, own, t.prefix)
  }
}

/** Whether a stream exists; other errors (NATS unreachable) are thrown. */
export async function streamExists(jsm: JetStreamManager, name: string): Promise<boolean> {
  try {
    await jsm.streams.info(name)
    return true
  } catch (err) {
    if (isNotFound(err)) return false
    throw err
  }
}

/** Creates stream `cfg.name`, or, when it exists, checks it and (with `apply`) updates it to `cfg`. */
async function upsertStream(
  jsm: JetStreamManager,
  apply: boolean,
  cfg: Partial<StreamConfig> & { name: string },
  check?: (existing: StreamConfig) => void,
  /** Recorded in the description of a stream created here (never added to an existing one). */
  created?: string,
  attempt = 0,
): Promise<void> {
  try {
    const existing = await jsm.streams.info(cfg.name)
    check?.(existing.config)
    // Kept as recorded. A stream of an older version records none: `npm run migrate` records one
    // (core/upgrade.ts), from the checkpoints; a node here would take the `created` reported now,
    // which a NATS restart may have moved since the workers read it. The change format, likewise,
    // is recorded only by the switch (recordChangeFormat) or at creation.
    const incarnation = incarnationOf(existing.config.description)
    const kept = incarnation ? withIncarnation(cfg.description, incarnation) : cfg.description
    const format = changeFormatOf(existing.config.description)
    const description = format === 'runs' ? kept : withChangeFormat(kept, format)
    if (apply) return void (await jsm.streams.update(cfg.name, { ...cfg, description }).catch((err) => Promise.reject(tooFewServers(cfg, err))))
    // Not a setting but what the stream is: an event stream that records no partition count yet
    // takes the count of the first process that starts on it (see checkEventStream). Only the
    // description changes; the settings stay as the stream has them.
    if (cfg.description && !(existing.config.description ?? '').startsWith(cfg.description)) await jsm.streams.update(cfg.name, { description })
  } catch (err) {
    if (!isNotFound(err)) throw err
    try {
      const description = withIncarnation(cfg.description, new Date().toISOString())
      await jsm.streams.add({ storage: 'file' as StreamConfig['storage'], ...cfg, description: created ? `${description}; ${created}` : description })
    } catch (addErr) {
      // Another process (every node ensures the streams at start) created it between our info and
      // add: nats-server says "already in use", or, while that create is still being applied,
      // "subjects overlap" (with the stream of the same name). Look again. A true overlap, with a
      // stream of another name, is thrown after the last look.
      const message = String(addErr)
      if (message.includes('already in use')) {
        if (!check || attempt >= 5) return
        return upsertStream(jsm, apply, cfg, check, created, attempt + 1)
      }
      if (message.includes('subjects overlap') && attempt < 5) {
        await new Promise((r) => setTimeout(r, 100 * (attempt + 1)))
        return upsertStream(jsm, apply, cfg, check, created, attempt + 1)
      }
      // A cluster that has just started elects its meta leader before every server has joined it:
      // until then a stream of more replicas than the servers known has "no suitable peers". Wait
      // for them (up to ~15 s), then say so.
      if (message.includes('no suitable peers') && attempt < 30) {
        await new Promise((r) => setTimeout(r, 500))
        return upsertStream(jsm, apply, cfg, check, created, attempt + 1)
      }
      throw tooFewServers(cfg, addErr)
    }
  }
}

/**
 * Thrown at start (and by `npm run migrate`) when JetStream cannot place a stream's replicas:
 * FANFARE_REPLICAS above the number of servers with JetStream. Said in one line naming the
 * variable; it used to be JetStream's bare "no suitable peers for placement" with a stack trace.
 */
export class ReplicasExceedServers extends StartFailure {
  constructor(stream: string, replicas: number, cause: unknown) {
    super(
      `FANFARE_REPLICAS is ${replicas} but JetStream cannot place stream ${stream} on ${replicas} servers (no suitable peers for placement): ` +
        `set FANFARE_REPLICAS to at most the number of nats-servers with JetStream in the cluster (README "Running on a NATS cluster")`,
      { cause },
    )
    this.name = 'ReplicasExceedServers'
  }
}

/** `err` as ReplicasExceedServers when it is JetStream's refusal to place `cfg`'s replicas. */
const tooFewServers = (cfg: Partial<StreamConfig> & { name: string }, err: unknown) =>
  String(err).includes('no suitable peers') ? new ReplicasExceedServers(cfg.name, cfg.num_replicas ?? 1, err) : err

export function isNotFound(err: unknown): boolean {
  return /not found/i.test(String((err as Error)?.message ?? err))
}
