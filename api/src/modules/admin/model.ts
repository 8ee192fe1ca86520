import { t } from 'elysia'
import { EventId, Name } from '../../../../core/events'
import { Reset, ScoreOperator, SortOrder } from '../leaderboards/model'
import { integerParam, MAX_ID } from '../../params'

export const BoardParams = t.Object({ board: Name })
export const BoardConfigBody = t.Object(
  { order: t.Optional(SortOrder), operator: t.Optional(ScoreOperator), reset: t.Optional(Reset) },
  { additionalProperties: false },
)
export type BoardConfigBody = typeof BoardConfigBody.static

export const BoardConfig = t.Object({
  board: t.String(),
  order: SortOrder,
  operator: ScoreOperator,
  reset: Reset,
  configured: t.Boolean({ description: 'false: no admin set these rules (the defaults)' }),
})

export const MessageParams = t.Object({ room: Name, id: EventId })
export const RoomParams = t.Object({ room: Name })
export const Visibility = t.Union([t.Literal('public'), t.Literal('private')])
export const RoomSettingsBody = t.Object({ visibility: Visibility }, { additionalProperties: false })
export const RoomSettings = t.Object({ room: t.String(), visibility: Visibility })

const Lag = t.Union([t.Integer(), t.Null()])
export const PartitionStatus = t.Object({
  partition: t.Integer(),
  seq: t.Integer({ description: 'last applied stream sequence (0: nothing yet)' }),
  fence: t.Integer({ description: 'fencing token of the ownership that last claimed the partition' }),
  updatedAt: t.Union([t.String(), t.Null()]),
  consumer: t.Union([t.String(), t.Null()], { description: 'durable consumer of the newest ownership (from the stream\'s consumer names); null: none' }),
  lag: t.Union([t.Integer(), t.Null()], {
    description:
      'events of this projection and partition not yet applied, as the worker holding the partition knows it: as of its last delivery (an event stored a moment ago may not be counted yet); while a batch is retried, plus those stored since the stall began (the batch had taken a second, or first failed). null: no worker holds the partition, or it did not answer within 1 s',
  }),
  waiting: t.Union(
    [
      t.Object({
        for: t.Union([t.Literal('consumer'), t.Literal('pull'), t.Literal('rest'), t.Literal('apply'), t.Literal('publish'), t.Literal('backoff')], {
          description:
            "consumer: its consumer being (re)opened; pull: a first message (an idle partition, pull after pull); rest: the rest of a batch; apply: Postgres applying the batch (retries included); publish: JetStream acknowledging the last batch's change runs; backoff: the pause after a consumer reset",
        }),
        since: t.String({ description: 'when the runner entered this step' }),
      }),
      t.Null(),
    ],
    { description: 'what the runner holding the partition is waiting for, and since when: a partition that stands still says here where; null as lag is' },
  ),
  oldestUnappliedAt: t.Union([t.String(), t.Null()], {
    description: 'when the oldest event seen stored and not yet applied was stored (sampled while FANFARE_EVENT_RETENTION_MS is set); null: none known',
  }),
  expired: t.Union(
    [
      t.Object({
        fromSeq: t.Integer(),
        toSeq: t.Integer(),
        at: t.String({ description: 'when a runner found it' }),
      }),
      t.Null(),
    ],
    { description: 'the last range of stream sequences in which retention deleted events of this partition before they were applied (at least one: lost to the read model); null: never' },
  ),
})
export const UnclaimedStatus = t.Object(
  {
    name: t.Literal('unclaimed'),
    partition: t.Literal(0, { description: "it runs in the worker holding partition 0's lease (GET /admin/workers)" }),
    seq: t.Integer({ description: 'stream sequence of the last message it wrote as a dead letter (0: none yet); every stray at or below it is written' }),
    fence: t.Integer({ description: 'fencing token of the latest owner that claimed it (0: never started)' }),
    updatedAt: t.Union([t.String(), t.Null()], { description: 'when its checkpoint last moved or, before any dead letter, when it first started; null: never started. A look that finds nothing writes nothing: when it last looked is not recorded' }),
    deadLetters: t.Integer({ description: 'its dead letters still held (neither replayed nor discarded)' }),
  },
  { description: 'the catch of messages on event subjects no projection consumes (dead letters of projection unclaimed): not a read model, nothing to rebuild, no lag' },
)
export const ProjectionsReport = t.Object({
  stream: t.Object({ name: t.String(), lastSeq: t.Integer(), messages: t.Integer() }),
  unclaimed: UnclaimedStatus,
  projections: t.Array(
    t.Object({
      projection: t.String(),
      appliedSeq: t.Integer({ description: 'highest stream sequence applied in any partition' }),
      lag: t.Union([Lag], { description: "events of this projection not yet applied (sum over partitions, each as its worker knows it); null while a partition's lag is unknown" }),
      partitions: t.Array(PartitionStatus),
    }),
  ),
})
export type ProjectionsReport = typeof ProjectionsReport.static

export const DeadLettersQuery = t.Object({
  limit: integerParam('limit', { minimum: 1, maximum: 100, default: 50 }),
  before: t.Optional(integerParam('before', { minimum: 1, maximum: MAX_ID, description: 'dead letter id: only older ones' })),
})
export const DeadLetter = t.Object({
  id: t.Integer(),
  projection: t.String(),
  partition: t.Integer(),
  streamSeq: t.Integer(),
  subject: t.String(),
  eventId: t.Union([t.String(), t.Null()]),
  reason: t.String(),
  payload: t.String(),
  createdAt: t.String(),
})
export type DeadLetter = typeof DeadLetter.static
export const DeadLetterParams = t.Object({ id: integerParam('id', { minimum: 1, maximum: MAX_ID, description: 'dead letter id' }) })
export const ReplayResult = t.Object({
  outcome: t.Literal('replayed', { description: 'applied once through its projection; the dead letter is gone' }),
  deadLetter: DeadLetter,
})
export const DeadLetters = t.Object({ deadLetters: t.Array(DeadLetter, { description: 'newest first' }) })

export const WorkerEntry = t.Object({
  id: t.String({ description: 'worker id: host-pid-random' }),
  partitions: t.Array(t.Integer(), { description: 'partitions whose lease this worker holds now, ascending' }),
  since: t.String({ description: 'when the worker started (ISO 8601)' }),
  heartbeatAt: t.String({ description: 'last heartbeat (ISO 8601); a worker is listed until its heartbeat expires' }),
})
export const WorkersReport = t.Object({
  workers: t.Array(WorkerEntry, { description: 'live workers, by id' }),
  partitions: t.Integer({ description: 'partition count of the deployment' }),
})
export type WorkersReport = typeof WorkersReport.static

export const RebuildParams = t.Object({ name: t.String({ maxLength: 64, description: 'leaderboards or chat' }) })
export const RebuildQuery = t.Object({
  force: t.Boolean({ default: false, description: 'rebuild even if the stream no longer starts at sequence 1 (partial result)' }),
})
export const RebuildJob = t.Object({
  id: t.String(),
  projection: t.String(),
  state: t.Union([t.Literal('requested'), t.Literal('running'), t.Literal('switching'), t.Literal('done'), t.Literal('failed')]),
  requestedAt: t.String(),
  force: t.Boolean(),
  owner: t.Optional(t.String({ description: 'worker running it' })),
  heartbeatAt: t.Optional(t.String()),
  attempts: t.Integer({ description: 'claims so far; a takeover of a dead worker restarts from scratch' }),
  appliedSeq: t.Integer({ description: 'last stream sequence the shadow copy applied' }),
  pending: t.Integer({ description: 'events of the projection still to read at the last report' }),
  switchedAtSeq: t.Optional(t.Integer({ description: 'stream position where the rebuilt model took over' })),
  finishedAt: t.Optional(t.String()),
  error: t.Optional(t.String()),
})
export const RebuildJobs = t.Object({ jobs: t.Array(RebuildJob, { description: "each projection's latest job, in projection order" }) })

export const ChannelLoad = t.Object({ channel: t.String(), subscribers: t.Integer({ description: 'sockets watching it' }) })
export type ChannelLoad = typeof ChannelLoad.static
export const NodeStats = t.Object({
  id: t.String({ description: 'API node id: host-pid' }),
  startedAt: t.String({ description: 'when its live side started (ISO 8601)' }),
  connections: t.Integer({ description: 'open WebSockets' }),
  subscriptions: t.Integer({ description: 'channel subscriptions over its sockets' }),
  channels: t.Integer({ description: 'channels watched by at least one of its sockets' }),
  busiest: t.Array(ChannelLoad, { description: 'its most watched channels (at most 10)' }),
})
export type NodeStats = typeof NodeStats.static
export const NodesReport = t.Object({
  nodes: t.Array(NodeStats, { description: 'API nodes that answered, by id' }),
  busiest: t.Array(ChannelLoad, { description: 'most watched channels over every node, subscribers summed (at most 10)' }),
  workers: t.Array(WorkerEntry, { description: 'live stream workers and their partitions (as GET /admin/workers)' }),
  partitions: t.Integer({ description: 'partition count of the deployment' }),
})
