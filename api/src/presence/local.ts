import type { ChannelDelta, LeaveReason, NodePart } from './view'

/** Why a connection of this node left a channel (`node_lost` and `unknown` are the cluster's to say). */
export type LocalLeave = Exclude<LeaveReason, 'node_lost' | 'unknown'>

/** Who a tracked connection is: a user (counted as a user and a connection) or an anonymous viewer (a connection). */
export type Who = { user: string; name?: string } | { user?: undefined }

type LocalChannel = {
  /** user -> their connections here, display name, and the timer of a grace after their last one closed. */
  users: Map<string, { name?: string; conns: Set<string>; linger?: unknown }>
  anonymous: Set<string>
}

/**
 * This node's own presence: which of its connections subscribe to which presence-tracked channels.
 * Every change of what the node reports (a user present or not, its connection count) is handed to
 * `onDelta` at once, as a ChannelDelta.
 *
 * A user whose last connection here closed (not an explicit unsubscribe) stays reported for
 * `graceMs`: a page reload, or a resume on another node, is then not a leave and a join. An
 * explicit unsubscribe (`left`), or a socket closed because its credential was revoked
 * (`revoked`: no flaky network, nothing to wait for), leaves at once.
 */
export function createLocalPresence(deps: {
  graceMs: number
  onDelta: (delta: ChannelDelta) => void
  timers?: { set: (fn: () => void, ms: number) => unknown; clear: (handle: unknown) => void }
}) {
  const timers = deps.timers ?? { set: (fn: () => void, ms: number) => setTimeout(fn, ms), clear: (h: unknown) => clearTimeout(h as ReturnType<typeof setTimeout>) }
  const channels = new Map<string, LocalChannel>()

  const connectionsOf = (c: LocalChannel) => {
    let n = c.anonymous.size
    for (const u of c.users.values()) n += u.conns.size
    return n
  }
  const tidy = (channel: string, c: LocalChannel) => {
    if (c.users.size === 0 && c.anonymous.size === 0) channels.delete(channel)
  }

  /**
   * Another node says `user` left `channel` for good (`left`, `revoked`): if they linger here
   * (their last connection here closed, within the grace), they leave now, for the same reason.
   * A user who reconnected onto another node and unsubscribed there is gone, not waiting for
   * this node's grace to end as `disconnected`.
   */
  const endGrace = (channel: string, user: string, reason: LocalLeave) => {
    const c = channels.get(channel)
    const u = c?.users.get(user)
    if (!c || !u || u.conns.size > 0 || u.linger === undefined) return
    timers.clear(u.linger)
    u.linger = undefined
    c.users.delete(user)
    deps.onDelta({ channel, connections: connectionsOf(c), remove: [[user, reason]] })
    tidy(channel, c)
  }

  return {
    /** A connection subscribed to a presence-tracked channel. */
    track(channel: string, conn: string, who: Who) {
      let c = channels.get(channel)
      if (!c) channels.set(channel, (c = { users: new Map(), anonymous: new Set() }))
      if (who.user === undefined) {
        if (c.anonymous.has(conn)) return
        c.anonymous.add(conn)
        return deps.onDelta({ channel, connections: connectionsOf(c) })
      }
      const u = c.users.get(who.user)
      if (u) {
        if (u.linger !== undefined) {
          timers.clear(u.linger)
          u.linger = undefined
        }
        if (u.conns.has(conn)) return
        u.conns.add(conn)
        const renamed = who.name !== undefined && who.name !== u.name
        if (renamed) u.name = who.name
        return deps.onDelta({ channel, connections: connectionsOf(c), ...(renamed ? { add: [[who.user, who.name]] } : {}) })
      }
      c.users.set(who.user, { name: who.name, conns: new Set([conn]) })
      deps.onDelta({ channel, connections: connectionsOf(c), add: [[who.user, who.name]] })
    },

    /** A connection left a channel: unsubscribed (`left`), closed (`disconnected`), or closed for a revoked credential (`revoked`). */
    untrack(channel: string, conn: string, who: Who, reason: LocalLeave) {
      const c = channels.get(channel)
      if (!c) return
      if (who.user === undefined) {
        if (!c.anonymous.delete(conn)) return
        deps.onDelta({ channel, connections: connectionsOf(c) })
        return tidy(channel, c)
      }
      const u = c.users.get(who.user)
      if (!u || !u.conns.delete(conn)) return
      if (u.conns.size > 0) return deps.onDelta({ channel, connections: connectionsOf(c) })
      const user = who.user
      const leave = (why: LocalLeave) => {
        const now = channels.get(channel)
        const still = now?.users.get(user)
        if (!now || still !== u || u.conns.size > 0) return
        now.users.delete(user)
        deps.onDelta({ channel, connections: connectionsOf(now), remove: [[user, why]] })
        tidy(channel, now)
      }
      if (reason !== 'disconnected') return leave(reason)
      deps.onDelta({ channel, connections: connectionsOf(c) })
      u.linger = timers.set(() => {
        u.linger = undefined
        leave('disconnected')
      }, deps.graceMs)
    },

    endGrace,

    /** `user`'s credential was revoked: wherever they linger here (closed, within the grace), they leave now as `revoked`. */
    endGraces(user: string) {
      for (const channel of [...channels.keys()]) endGrace(channel, user, 'revoked')
    },

    /** Everything this node reports now (a lingering user is still reported). */
    state(): Map<string, NodePart> {
      const out = new Map<string, NodePart>()
      for (const [channel, c] of channels) {
        out.set(channel, { connections: connectionsOf(c), users: new Map([...c.users].map(([user, u]) => [user, u.name])) })
      }
      return out
    },

    stop() {
      for (const c of channels.values()) for (const u of c.users.values()) if (u.linger !== undefined) timers.clear(u.linger)
      channels.clear()
    },
  }
}

export type LocalPresence = ReturnType<typeof createLocalPresence>
