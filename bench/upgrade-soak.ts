/**
 * `bun bench/upgrade-soak.ts --from=<checkout>`: a rolling upgrade from an older Fanfare to this
 * checkout under load, checked from outside. `<checkout>` is the older version unpacked (say `git
 * worktree add /tmp/old <commit>` with node_modules linked); both run on the machine's Postgres
 * and NATS, on a database and streams of their own. The older version migrates and runs a worker
 * and an API node; score batches flow to a sum board and a raw WebSocket subscriber follows it.
 * Then, as the README's Upgrading says: an API node of this version joins (a second subscriber on
 * it); `npm run migrate -- --live-batches` is refused while the older API node follows the change
 * streams; a worker of this version replaces the older one; the older API node stops and the load
 * moves to the new one; the switch goes through, and the new worker publishes the latest change
 * format. Exits non-zero if the switch was not refused first or not made after, an acknowledged
 * score is missing from the board or counted twice, a subscriber saw a gap, a repeat or a resync,
 * or the last batch messages are not compressed.
 */
import { jetstreamManager } from '@nats-io/jetstream'
import { channelOf } from '../core/channels'
import { changeFormatRecorded, connectNats, LATEST_CHANGE_FORMAT, topology } from '../core/nats'
import { createTestEnv } from '../core/testing/env'
import { freePort, runUntilExit, spawnProc, until, waitReady, WsClient, type Proc } from '../test/e2e/harness'
import { apiAt, configureBoard, postEvents, scoreEvent } from '../test/cluster/support'

const from = process.argv.find((a) => a.startsWith('--from='))?.slice(7)
if (!from) throw new Error('usage: bun bench/upgrade-soak.ts --from=<older checkout>')
const env = await createTestEnv({ FANFARE_PARTITIONS: '2' }, { migrated: false })
const procs: Proc[] = []
const problems: string[] = []
const check = (ok: boolean, what: string) => (ok ? log(`ok: ${what}`) : (problems.push(what), log(`BROKEN: ${what}`)))
const log = (m: string) => console.log(`${new Date().toISOString().slice(11, 23)} ${m}`)
const startApi = (port: number, cwd?: string) => {
  const p = spawnProc(cwd ? 'old-api' : 'api', 'api/src/main.ts', { ...env.vars, PORT: String(port), HOST: '127.0.0.1' }, cwd)
  procs.push(p)
  return p
}
/** A subscriber of `channel` on the node at `port`: its frames, checked at the end. */
const subscriber = async (port: number, channel: string) => {
  const ws = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`)
  ws.send({ op: 'subscribe', ref: 's', channel })
  await until('a snapshot', () => ws.of(channel).length >= 1)
  return ws
}
const inOrder = (ws: WsClient, channel: string) => {
  const [snapshot, ...updates] = ws.of(channel)
  return { snapshot: snapshot.version as number, updates: updates.length, last: (updates.at(-1)?.version ?? snapshot.version) as number, ok: updates.every((f, i) => f.op === 'update' && f.version === snapshot.version + 1 + i), resyncs: ws.frames.filter((f) => f.resync).length }
}
try {
  const migrated = Bun.spawnSync([process.execPath, 'core/db/migrate-cli.ts'], { cwd: from, env: { ...process.env, ...env.vars } })
  if (migrated.exitCode !== 0) throw new Error(`the older version's migrate failed: ${migrated.stderr}`)
  const nc = await connectNats(env.vars.NATS_URL, 'upgrade-soak')
  const jsm = await jetstreamManager(nc)
  log(`older version's change format: ${await changeFormatRecorded(jsm, env.config)}`)
  const oldWorker = spawnProc('old-worker', 'stream-workers/src/main.ts', env.vars, from)
  procs.push(oldWorker)
  const oldPort = freePort()
  const oldApi = startApi(oldPort, from)
  await waitReady(`http://127.0.0.1:${oldPort}`, [oldApi])
  await configureBoard(apiAt(oldPort, env.vars), 'up', 'sum')
  const channel = channelOf.leaderboard('up')
  const onOld = await subscriber(oldPort, channel)
  // Batches of 40 scores of 1, ids never reused; a refused or unanswered batch is resent as it is.
  let acknowledged = 0
  let target = oldPort
  let stopping = false
  const load = (async () => {
    while (!stopping) {
      const events = Array.from({ length: 40 }, (_, i) => scoreEvent(`s${acknowledged + i}`, 'up', `player-${(acknowledged + i) % 97}`, 1))
      if ((await postEvents(apiAt(target, env.vars), events)).status === 202) acknowledged += 40
      await Bun.sleep(20)
    }
  })()
  await Bun.sleep(3000)
  const newPort = freePort()
  const newApi = startApi(newPort)
  await waitReady(`http://127.0.0.1:${newPort}`, [newApi])
  const onNew = await subscriber(newPort, channel)
  const refused = await runUntilExit('core/db/migrate-cli.ts', env.vars, 60_000, ['--live-batches'])
  check(refused.code === 1 && refused.output.includes('OlderNodesFollowing'), `the switch refused while the older API node follows (exit ${refused.code})`)
  procs.push(spawnProc('worker', 'stream-workers/src/main.ts', env.vars))
  await Bun.sleep(3000)
  await oldWorker.stop()
  log('older worker stopped')
  await Bun.sleep(3000)
  target = newPort
  await oldApi.stop()
  log('older API node stopped; load on the new one')
  await Bun.sleep(2000)
  const switched = await runUntilExit('core/db/migrate-cli.ts', env.vars, 60_000, ['--live-batches'])
  check(switched.code === 0 && (await changeFormatRecorded(jsm, env.config)) === LATEST_CHANGE_FORMAT, `the switch made once it has gone (exit ${switched.code})`)
  await Bun.sleep(8000)
  stopping = true
  await load
  log(`${acknowledged} scores acknowledged`)
  await until('the new node\'s subscriber has every score', () => inOrder(onNew, channel).last >= acknowledged + 1, 60_000)
  const n = inOrder(onNew, channel)
  const o = inOrder(onOld, channel)
  log(`subscriber on the new node: snapshot at ${n.snapshot}, ${n.updates} updates to ${n.last}; on the older node until it stopped: ${o.updates} updates`)
  check(n.ok && n.resyncs === 0 && n.last === acknowledged + 1, 'the new node\'s subscriber: every version once, in order, no resync')
  check(o.ok && o.resyncs === 0, 'the older node\'s subscriber: in order, no resync, until its node stopped')
  const board = await (await fetch(`http://127.0.0.1:${newPort}/v1/leaderboards/up?limit=100`)).json()
  const total = board.entries.reduce((sum: number, e: { score: number }) => sum + e.score, 0)
  check(total === acknowledged, `the board holds every acknowledged score once (${total} of ${acknowledged})`)
  const t = topology(env.config)
  const batchSubjects = Object.keys((await jsm.streams.info(t.changeStreams.leaderboard, { subjects_filter: '>' })).state.subjects ?? {}).filter((s) => s.includes('._batch.'))
  const last = await Promise.all(batchSubjects.map(async (s) => (await jsm.streams.getMessage(t.changeStreams.leaderboard, { last_by_subj: s }))!.data))
  check(last.length > 0 && last.every((d) => d[0] === 0x28 && d[1] === 0xb5), `the last batch message of each partition is compressed (${last.map((d) => d.length).join(', ')} bytes)`)
  await nc.close()
} finally {
  await Promise.all(procs.map((p) => p.stop()))
  await env.cleanup()
}
console.log(problems.length === 0 ? 'upgrade OK' : `upgrade BROKEN: ${problems.join('; ')}`)
process.exit(problems.length === 0 ? 0 : 1)
