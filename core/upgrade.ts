import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream'
import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from './config'
import { openLeaseBucket } from './leases'
import { ensureStreams, isNotFound, legacyChangeStream, streamExists, topology } from './nats'
import { openJobBucket } from './rebuild-jobs'

/**
 * A one-off step that brings the NATS side of a deployment from an older Fanfare to this one.
 * Steps run only from the upgrade command (`npm run migrate`), once per upgrade, never from a
 * node's start: in a rolling upgrade older nodes still run on what a step changes, and the
 * operator chooses when that happens. Each step is idempotent (it checks before it acts).
 */
type UpgradeStep = {
  name: string
  /** Does what the step exists for when it is still needed; says what it did, or undefined. */
  run: (jsm: JetStreamManager, config: Config) => Promise<string | undefined>
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
]

/**
 * The NATS part of `npm run migrate`: runs the pending upgrade steps, then creates or updates every
 * stream and bucket to match the config, the buckets' replica count included (a node opening an
 * existing bucket does not change it). Returns what it did, one line each.
 */
export async function upgradeNats(nc: NatsConnection, config: Config): Promise<string[]> {
  const done: string[] = []
  const jsm = await jetstreamManager(nc)
  for (const step of steps) {
    const did = await step.run(jsm, config)
    if (did) done.push(`${step.name}: ${did}`)
  }
  await ensureStreams(nc, config)
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

