/**
 * Where the events are when a soak's drain stands still short of what was acknowledged: the event
 * stream's state, each consumer's delivered / acknowledged / pending positions, and each
 * projection checkpoint, read again every 10 s while the version is watched for up to `watchMs`.
 * Tells a loss (the checkpoints at the consumers' positions, nothing pending) from a slow
 * catch-up (events pending, positions moving) or a stuck runner (pending, positions still).
 * Asking consumer infos makes nats-server 2.9.0-2.9.14 recount filtered pending (the crawl,
 * bench/filtered-pending-probe.ts): a diagnosis, not something a healthy run does.
 */
import { jetstreamManager } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import postgres from 'postgres'

export async function stallDiagnosis(o: {
  natsUrls: string[]
  databaseUrl: string
  stream: string
  version: () => Promise<number>
  watchMs?: number
  /** An API node: GET /admin/projections says what each partition's runner waits for (see RunnerStep). */
  admin?: { baseUrl: string; adminToken: string }
}): Promise<string[]> {
  const lines: string[] = []
  const started = Date.now()
  const sql = postgres(o.databaseUrl, { max: 1, onnotice: () => {} })
  const nc = await connect({ servers: o.natsUrls, timeout: 5000 }).catch((e) => {
    lines.push(`diagnosis: NATS unreachable: ${e}`)
    return undefined
  })
  const look = async () => {
    const at = `${((Date.now() - started) / 1000).toFixed(0)} s`
    lines.push(`diagnosis at +${at}: version ${await o.version().catch(() => 'unread')}`)
    if (nc) {
      try {
        const jsm = await jetstreamManager(nc, { timeout: 5000 })
        const si = await jsm.streams.info(o.stream)
        lines.push(`  stream ${o.stream}: messages ${si.state.messages}, seq ${si.state.first_seq}..${si.state.last_seq}, leader ${si.cluster?.leader ?? '-'}, replicas ${(si.cluster?.replicas ?? []).map((r) => `${r.name}${r.current ? '' : ' (behind)'}${r.offline ? ' (offline)' : ''}`).join(', ')}`)
        for await (const ci of jsm.consumers.list(o.stream)) {
          lines.push(`  consumer ${ci.name} ${ci.config.filter_subject ?? (ci.config.filter_subjects ?? []).join(',')}: delivered ${ci.delivered.stream_seq}, ack floor ${ci.ack_floor.stream_seq}, pending ${ci.num_pending}, ack pending ${ci.num_ack_pending}, redelivered ${ci.num_redelivered}, waiting ${ci.num_waiting}, leader ${ci.cluster?.leader ?? '-'}`)
        }
      } catch (e) {
        lines.push(`  NATS: ${e}`)
      }
    }
    if (o.admin) {
      try {
        const r = await fetch(`${o.admin.baseUrl}/admin/projections`, { headers: { authorization: `Bearer ${o.admin.adminToken}` }, signal: AbortSignal.timeout(5000) })
        const status = (await r.json()) as { projections: { projection: string; partitions: { partition: number; lag: number | null; waiting: { for: string; since: string } | null }[] }[] }
        for (const p of status.projections) {
          for (const x of p.partitions) {
            // A runner pulling for under 15 s is an idle (or caught-up) one: said only otherwise.
            const waitedS = x.waiting ? (Date.now() - Date.parse(x.waiting.since)) / 1000 : undefined
            if (x.waiting?.for === 'pull' && waitedS! < 15) continue
            lines.push(`  runner ${p.projection} p${x.partition}: lag ${x.lag ?? '-'}, ${x.waiting ? `waiting for ${x.waiting.for} for ${waitedS!.toFixed(1)} s` : 'no holder answered'}`)
          }
        }
      } catch (e) {
        lines.push(`  GET /admin/projections: ${e}`)
      }
    }
    const rows = await sql`select projection, partition, seq, fence, stream, updated_at from projection_checkpoints order by projection, partition`.catch((e) => [{ error: String(e) }])
    for (const r of rows as Record<string, unknown>[]) lines.push(`  checkpoint ${JSON.stringify(r)}`)
  }
  try {
    await look()
    const watchMs = o.watchMs ?? 120_000
    let last = await o.version().catch(() => -1)
    const seen: string[] = []
    for (let t = 10_000; t <= watchMs; t += 10_000) {
      await Bun.sleep(10_000)
      const v = await o.version().catch(() => -1)
      seen.push(`+${t / 1000} s ${v}`)
      if (v === last && t % 30_000 === 0) await look()
      last = v
    }
    lines.push(`diagnosis: version every 10 s: ${seen.join(', ')}`)
    await look()
  } finally {
    await nc?.close().catch(() => {})
    await sql.end({ timeout: 1 }).catch(() => {})
  }
  return lines
}
