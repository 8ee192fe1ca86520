/**
 * The first nats-server release that counts a filtered consumer's pending messages without the
 * defect below (nats-server commit daacbf558, "Added optimized store NumPending() call ... fixed a
 * bug in filestore filteredPending()").
 */
export const FILTERED_PENDING_FIXED_IN = [2, 9, 15] as const

/**
 * Why a worker on nats-server `version` (as the server reports it, `2.9.10`) catches up slowly, or
 * undefined when that release does not. Before 2.9.15, when nats-server counts a filtered
 * consumer's pending messages (the consumer is created, the server restarts, someone asks for the
 * consumer's info) while the consumer's next message lies in the first half of what is left of its
 * subject in the stream's last block, the count comes out without its last sequence; the server then
 * counts again at every delivery, each time reading the block from its start to the consumer's
 * position, until the consumer passes that middle. A partition re-opened behind a backlog (after a
 * NATS restart, a worker restart, a partition moved) reads it 20-50x slower, slower as it goes: on a
 * loaded machine 500 events every 14-20 s (bench/findings.md, 2026-11-30, the filtered-pending count).
 * Nothing Fanfare asks avoids it (a consumer must be created where its partition stands).
 */
export function slowCatchUpOf(version: string | undefined): string | undefined {
  const m = version?.match(/^v?(\d+)\.(\d+)\.(\d+)/)
  if (!m) return undefined
  const [major, minor, patch] = [Number(m[1]), Number(m[2]), Number(m[3])]
  const [fm, fn, fp] = FILTERED_PENDING_FIXED_IN
  const affected = major < fm || (major === fm && (minor < fn || (minor === fn && patch < fp)))
  if (!affected) return undefined
  return (
    `nats-server ${version} re-counts a consumer's pending events at every delivery after counting them behind a backlog ` +
    `(a NATS or worker restart, a partition moved): partitions then catch up 20-50x slower than they should; ` +
    `run nats-server ${FILTERED_PENDING_FIXED_IN.join('.')} or later`
  )
}
