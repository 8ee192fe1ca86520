import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from './config'
import { openLeaseBucket } from './leases'
import { sql } from 'drizzle-orm'
import { rowsOf, type Db } from './db/client'
import { ensureStreams, incarnationOf, isNotFound, legacyChangeStream, siteOf, streamExists, topology, withIncarnation } from './nats'
import { openJobBucket } from './rebuild-jobs'

/**
 * A one-off step that brings the NATS side of a deployment from an older Fanfare to this one.
 * Steps run only from the upgrade command (`npm run migrate`), once per upgrade, never from a
 * node's start: in a rolling upgrade older nodes still run on what a step changes, and the
 * operator chooses when that happens. Each step is idempotent (it checks before it acts).
 */
type UpgradeStep = {
  name: string
  /**
   * Does what the step exists for when it is still needed; says what it did, or undefined. `db`:
   * the deployment's database, when the command has one.
   */
  run: (jsm: JetStreamManager, config: Config, db: Db | undefined) => Promise<string | undefined>
}

const steps: UpgradeStep[] = [
  {
    // Before per-kind retention every change notice went to one stream whose subjects overlap the
    // per-kind streams': it has to go before they can be created. Its history is lost; clients
    // resuming from it get a resync snapshot, as for any lost history. API nodes of the older
    // version follow that stream: from here until they are replaced they are not ready.
    name: 'per-kind change streams',
    run: async (jsm, config) => {
      const legacy = legacyChangeStream(config)
      if (!(await streamExists(jsm, legacy))) return undefined
      await jsm.streams.delete(legacy).catch((err) => {
        if (!isNotFound(err)) throw err
      })
      return `deleted ${legacy} (the change stream of versions before per-kind streams)`
    },
  },
  {
    // A stream's identity (see streamIdentity) is now the creation time its description records:
    // nats-server 2.9 reports another `created` after a restart that followed a config update.
    // Streams of an older version record none. The event stream's reported `created` may already
    // have moved since the workers last read it (a NATS restart since a node started): they would
    // take it for a recreated stream and apply every event again. So it records the identity its
    // checkpoints past its start hold, the one the workers last agreed on (the most held, should
    // they differ); with none (no worker ran, or no database here), the reported one. The change
    // streams record the reported one: API nodes that read another re-sync their subscribers once.
    name: 'stream incarnations',
    run: async (jsm, config, db) => {
      const t = topology(config)
      const done: string[] = []
      for (const name of [t.eventStream, ...Object.values(t.changeStreams)]) {
        const info = await jsm.streams.info(name).catch((err) => {
          if (isNotFound(err)) return undefined
          throw err
        })
        if (!info || incarnationOf(info.config.description) !== undefined) continue
        let held: { stream: string } | undefined =
          db && name === t.eventStream
            ? (
                await rowsOf<{ stream: string }>(
                  db,
                  sql`select stream from projection_checkpoints where seq > 0 and left(stream, ${name.length + 1}) = ${`${name}@`}
                      group by stream order by count(*) desc, stream limit 1`,
                )
              )[0]
            : undefined
        // Checkpoints past the stream's last sequence count in another stream: this one was
        // recreated (NATS lost its data), and the identity NATS reports is the new one's.
        if (held && db) {
          const [past] = await rowsOf<{ n: number }>(db, sql`select count(*)::int as n from projection_checkpoints where stream = ${held.stream} and seq > ${info.state.last_seq}`)
          if (past.n > 0) held = undefined
        }
        const incarnation = held ? held.stream.slice(name.length + 1) : info.created
        await jsm.streams.update(name, { ...info.config, description: withIncarnation(info.config.description, incarnation) })
        done.push(
          held
            ? `${name}@${incarnation} (the one its checkpoints hold${incarnation === info.created ? '' : `; NATS now reports created ${info.created}`})`
            : `${name}@${incarnation}`,
        )
      }
      return done.length > 0 ? `recorded ${done.join(', ')}` : undefined
    },
  },
]

/**
 * The NATS part of `npm run migrate`: runs the pending upgrade steps, then creates or updates every
 * stream and bucket to match the config, the buckets' replica count included (a node opening an
 * existing bucket does not change it). Returns what it did, one line each. Run with an edge
 * site's config (FANFARE_EDGE_DOMAIN, NATS_URL its leaf server) it sets that site's streams.
 */
export async function upgradeNats(nc: NatsConnection, config: Config, db?: Db): Promise<string[]> {
  const done: string[] = []
  const jsm = await jetstreamManager(nc)
  for (const step of steps) {
    const did = await step.run(jsm, config, db)
    if (did) done.push(`${step.name}: ${did}`)
  }
  // The one writer of the streams' settings (nodes only create missing streams).
  await ensureStreams(nc, config, { apply: true })
  // An edge site's upgrade (its own event stream and mirrors): leases and rebuild jobs are the
  // hub's, an edge has no buckets (it used to get both, unused, in its domain).
  if (siteOf(config).kind === 'edge') return done
  await openLeaseBucket(nc, config)
  await openJobBucket(nc, config)
  const t = topology(config)
  for (const bucket of [t.leaseBucket, t.jobBucket]) {
    const name = `KV_${bucket}`
    const info = await jsm.streams.info(name)
    if (info.config.num_replicas !== config.FANFARE_REPLICAS) {
      await jsm.streams.update(name, { ...info.config, num_replicas: config.FANFARE_REPLICAS })
      done.push(`bucket ${bucket}: ${info.config.num_replicas} -> ${config.FANFARE_REPLICAS} replicas`)
    }
  }
  return done
}

