import { firstAtLeast, nowMs, summarize, type LatencySummary } from './stats'

type Frame = { at: number; from: number; version: number; totals: Record<string, number> }

/**
 * Watches `reactions:<stream>` channels from the benchmark's own process, one connection each: the
 * load clients share the 2 cores with the servers and receive frames late by a varying amount, so
 * frame times and the live totals' lag are taken here, where little else runs.
 */
export class ReactionObserver {
  private frames = new Map<string, Frame[]>()
  private sockets: WebSocket[] = []

  static async open(url: string, streams: string[]): Promise<ReactionObserver> {
    const o = new ReactionObserver()
    await Promise.all(
      streams.map(
        (stream) =>
          new Promise<void>((ok, fail) => {
            const ws = new WebSocket(url)
            const list: Frame[] = []
            o.frames.set(stream, list)
            o.sockets.push(ws)
            const timer = setTimeout(() => fail(new Error(`observer of ${stream} not subscribed in 30 s`)), 30_000)
            ws.onerror = () => fail(new Error(`observer of ${stream} could not connect`))
            ws.onopen = () => ws.send(JSON.stringify({ op: 'subscribe', ref: 'o', channel: `reactions:${stream}` }))
            ws.onmessage = (e) => {
              const at = nowMs()
              const f = JSON.parse(String(e.data))
              if (f.op === 'update') list.push({ at, from: f.from ?? f.version, version: f.version, totals: f.data.totals })
              else if (f.op === 'snapshot' || f.op === 'subscribed') clearTimeout(timer), ok()
              else if (f.op === 'error') fail(new Error(JSON.stringify(f)))
            }
          }),
      ),
    )
    return o
  }

  /** The update frames of one stream's channel, in arrival order. */
  framesOf(stream: string): readonly Frame[] {
    return this.frames.get(stream) ?? []
  }

  /**
   * For each acknowledged reaction (stream, emoji, its rank among the (stream, emoji) by stream
   * sequence, ack time): the time from its ack to the first frame whose total for the emoji reaches
   * the rank, i.e. that includes it. `missing`: reactions no frame included.
   */
  lag(acks: { stream: number[]; emoji: number[]; rank: number[]; at: number[] }, streams: string[], emojis: string[]): LatencySummary & { missing: number } {
    const series = new Map<string, { at: number[]; total: number[] }>()
    const seriesOf = (stream: number, emoji: number) => {
      const key = `${stream}/${emoji}`
      let s = series.get(key)
      if (!s) {
        s = { at: [], total: [] }
        for (const f of this.frames.get(streams[stream]) ?? []) {
          const t = f.totals[emojis[emoji]]
          if (t !== undefined) s.at.push(f.at), s.total.push(t)
        }
        series.set(key, s)
      }
      return s
    }
    const lags: number[] = []
    let missing = 0
    for (let k = 0; k < acks.at.length; k++) {
      const s = seriesOf(acks.stream[k], acks.emoji[k])
      const i = firstAtLeast(s.total, acks.rank[k])
      if (i === s.total.length) missing++
      else lags.push(s.at[i] - acks.at[k])
    }
    return { ...summarize(lags), missing }
  }

  /**
   * Frames received between `from` and `to`: how many, the closest two consecutive frames of a
   * channel, the most within any window (`windowMs`, less 20 ms of delivery jitter), and frames
   * that do not continue the previous one.
   */
  frameStats(from: number, to: number, windowMs: number) {
    let frames = 0
    let closest = Number.POSITIVE_INFINITY
    let mostInWindow = 0
    let gaps = 0
    for (const list of this.frames.values()) {
      const fs = list.filter((f) => f.at >= from && f.at <= to)
      frames += fs.length
      let lo = 0
      for (let k = 0; k < fs.length; k++) {
        if (k > 0) {
          closest = Math.min(closest, fs[k].at - fs[k - 1].at)
          if (fs[k].from !== fs[k - 1].version + 1) gaps++
        }
        while (fs[k].at - fs[lo].at >= windowMs - 20) lo++
        mostInWindow = Math.max(mostInWindow, k - lo + 1)
      }
    }
    return { frames, closest, mostInWindow, gaps }
  }

  close() {
    for (const ws of this.sockets) ws.close()
  }
}
