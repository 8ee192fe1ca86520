/**
 * The cluster's presence as one API node sees it: for every node it hears from, which users are
 * present in which channels and how many connections it holds there; and, from those, each
 * channel's totals. Pure (no timers, no I/O): the cluster transport (cluster.ts) feeds it what
 * nodes report and says when one is lost, and the view reports every change of a channel's totals
 * to `onChange`.
 *
 * Each node owns its own part (what its sockets subscribe to), so merging needs no consensus: a
 * user is present while at least one node reports them, and a channel's connections are the sum
 * over nodes. Totals are kept incrementally (a count of reporting nodes per user), so a change
 * costs O(changed users), never O(channel size).
 */

/**
 * Why a user left a channel: `left` (unsubscribed), `disconnected` (the last connection closed and
 * did not come back within the grace), `node_lost` (their API node died), `revoked` (their
 * credential was revoked: their sockets were closed, and they leave at once), `unknown` (the leave
 * was learnt from a node's full state after its update was missed, and that node no longer
 * remembers why: it keeps the reasons of its last MAX_GONE departures).
 */
export type LeaveReason = 'left' | 'disconnected' | 'node_lost' | 'revoked' | 'unknown'

/** One node's presence in one channel: its connections there and the users among them (id -> display name). */
export type NodePart = { connections: number; users: Map<string, string | undefined> }

/** What changed in one channel's totals. */
export type PresenceChange =
  | { kind: 'join'; channel: string; user: string; name?: string }
  | { kind: 'leave'; channel: string; user: string; reason: LeaveReason }
  /** A present user's display name changed (they connected again with a token naming them otherwise). */
  | { kind: 'update'; channel: string; user: string; name: string }
  | { kind: 'count'; channel: string }

/** A channel's totals over the cluster. */
export type ChannelPresence = { connections: number; users: Map<string, { name?: string; nodes: number }> }

/** A node's report of one channel: its new connection count, users added and removed. */
export type ChannelDelta = { channel: string; connections: number; add?: [string, string | undefined][]; remove?: [string, LeaveReason][] }

/** How a node's departures are keyed in a full state's `gone`. */
export const goneKey = (channel: string, user: string) => `${channel}\u0000${user}`

export function createPresenceView(onChange: (change: PresenceChange) => void) {
  /** node -> channel -> part */
  const nodes = new Map<string, Map<string, NodePart>>()
  const totals = new Map<string, ChannelPresence>()

  const totalOf = (channel: string) => {
    let t = totals.get(channel)
    if (!t) totals.set(channel, (t = { connections: 0, users: new Map() }))
    return t
  }
  const forget = (channel: string) => {
    const t = totals.get(channel)
    if (t && t.connections === 0 && t.users.size === 0) totals.delete(channel)
  }

  function addUser(channel: string, t: ChannelPresence, user: string, name: string | undefined) {
    const u = t.users.get(user)
    if (u) {
      u.nodes++
      rename(channel, u, user, name)
      return
    }
    t.users.set(user, { name, nodes: 1 })
    onChange({ kind: 'join', channel, user, ...(name !== undefined ? { name } : {}) })
  }

  /** A new display name for a present user (none given keeps the one they have): told as an `update`. */
  function rename(channel: string, u: { name?: string }, user: string, name: string | undefined) {
    if (name === undefined || u.name === name) return
    u.name = name
    onChange({ kind: 'update', channel, user, name })
  }

  function removeUser(channel: string, t: ChannelPresence, user: string, reason: LeaveReason) {
    const u = t.users.get(user)
    if (!u) return
    if (--u.nodes > 0) return
    t.users.delete(user)
    onChange({ kind: 'leave', channel, user, reason })
  }

  function setConnections(channel: string, t: ChannelPresence, part: NodePart, connections: number) {
    if (part.connections === connections) return
    t.connections += connections - part.connections
    part.connections = connections
    onChange({ kind: 'count', channel })
  }

  function partOf(node: string, channel: string): NodePart {
    let channels = nodes.get(node)
    if (!channels) nodes.set(node, (channels = new Map()))
    let part = channels.get(channel)
    if (!part) channels.set(channel, (part = { connections: 0, users: new Map() }))
    return part
  }

  function dropPart(node: string, channel: string, part: NodePart, reasonOf: (user: string) => LeaveReason) {
    const t = totalOf(channel)
    setConnections(channel, t, part, 0)
    for (const user of part.users.keys()) removeUser(channel, t, user, reasonOf(user))
    part.users.clear()
    nodes.get(node)?.delete(channel)
    forget(channel)
  }

  function apply(node: string, deltas: ChannelDelta[]) {
    for (const d of deltas) {
      const part = partOf(node, d.channel)
      const t = totalOf(d.channel)
      // Connections first: a join or leave reported next carries the counts after the whole change.
      setConnections(d.channel, t, part, d.connections)
      for (const [user, named] of d.add ?? []) {
        // A user without a display name crosses NATS as JSON, where undefined in a tuple is null.
        const name = named ?? undefined
        if (part.users.has(user)) {
          // Known here already: a new display name only.
          part.users.set(user, name)
          const u = t.users.get(user)
          if (u) rename(d.channel, u, user, name)
          continue
        }
        part.users.set(user, name)
        addUser(d.channel, t, user, name)
      }
      for (const [user, reason] of d.remove ?? []) {
        if (!part.users.delete(user)) continue
        removeUser(d.channel, t, user, reason)
      }
      if (part.connections === 0 && part.users.size === 0) nodes.get(node)?.delete(d.channel)
      forget(d.channel)
    }
  }

  return {
    /** Applies a node's report of what changed in some channels. */
    apply,

    /**
     * Replaces everything a node reported with its full state (it was new, or updates from it were
     * missed). Users it no longer has leave with the reason the node gives in `gone` (keyed by
     * `goneKey`), or `unknown` when it no longer remembers; the channels that changed are
     * returned, so their subscribers can be given a fresh snapshot.
     */
    replace(node: string, state: Map<string, NodePart>, gone: Map<string, LeaveReason> = new Map()): Set<string> {
      const touched = new Set<string>()
      const before = nodes.get(node) ?? new Map<string, NodePart>()
      const why = (channel: string, user: string) => gone.get(goneKey(channel, user)) ?? 'unknown'
      for (const [channel, part] of before) {
        const next = state.get(channel)
        if (!next) {
          if (part.connections > 0 || part.users.size > 0) touched.add(channel)
          dropPart(node, channel, part, (user) => why(channel, user))
          continue
        }
        const remove: [string, LeaveReason][] = []
        for (const user of part.users.keys()) if (!next.users.has(user)) remove.push([user, why(channel, user)])
        const add: [string, string | undefined][] = []
        for (const [user, name] of next.users) if (part.users.get(user) !== name || !part.users.has(user)) add.push([user, name])
        if (remove.length || add.length || part.connections !== next.connections) touched.add(channel)
        apply(node, [{ channel, connections: next.connections, add, remove }])
      }
      for (const [channel, next] of state) {
        if (before.has(channel)) continue
        if (next.connections === 0 && next.users.size === 0) continue
        touched.add(channel)
        apply(node, [{ channel, connections: next.connections, add: [...next.users] }])
      }
      return touched
    },

    /**
     * Files a node's part under another name, changing no totals (they do not depend on which node
     * reports a user): a run of a node that said goodbye keeps its users for the grace under a name
     * of its own while its next run, under the node's id, reports its own.
     */
    rename(node: string, to: string) {
      const channels = nodes.get(node)
      if (!channels) return
      nodes.delete(node)
      nodes.set(to, channels)
    },

    /**
     * Takes one user out of a node's part in a channel (a run that is over, kept for a while: its
     * user left for good elsewhere). They leave with `reason` if no other node has them.
     */
    removeUser(node: string, channel: string, user: string, reason: LeaveReason) {
      const part = nodes.get(node)?.get(channel)
      if (!part?.users.delete(user)) return
      removeUser(channel, totalOf(channel), user, reason)
      forget(channel)
    },

    /** A node is gone (no heartbeat for the TTL, or it said goodbye): its users leave with `reason`. */
    drop(node: string, reason: LeaveReason = 'node_lost'): Set<string> {
      const channels = nodes.get(node)
      const touched = new Set<string>()
      if (!channels) return touched
      for (const [channel, part] of [...channels]) {
        touched.add(channel)
        dropPart(node, channel, part, () => reason)
      }
      nodes.delete(node)
      return touched
    },

    /** A channel's totals (empty when nobody is there). */
    of(channel: string): ChannelPresence {
      return totals.get(channel) ?? { connections: 0, users: new Map() }
    },

    /** Nodes with any presence. */
    nodes: () => [...nodes.keys()],

    /** Channels with anyone present. */
    channels: () => [...totals.keys()],
  }
}

export type PresenceView = ReturnType<typeof createPresenceView>
