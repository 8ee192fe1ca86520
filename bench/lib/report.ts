/** Figures the benchmarks produce and how they are printed. */

/**
 * A target on the ratio figure / baseline, or on the figure itself (`value`, in the figure's unit:
 * "at least 20,000 reactions/s", whatever the baseline does).
 */
export type Target = { op: '>=' | '<='; ratio: number } | { op: '>=' | '<='; value: number }

/** One measured figure of Fanfare next to a baseline measured in the same run. */
export type Figure = {
  /** Measurement group: fan-out, end-to-end, projection, connections, ingest. */
  group: string
  /** What was measured, e.g. "deliveries/s, 1000 clients, 1 channel". */
  name: string
  unit: string
  value: number
  /** What the baseline is, e.g. "bare Bun.serve pub/sub". */
  baselineName: string
  baseline: number
  target?: Target
}

export const ratioOf = (f: Figure) => f.value / f.baseline

/** True/false when the figure has a target, undefined when it has none. */
export function targetMet(f: Figure): boolean | undefined {
  if (!f.target) return undefined
  const [x, limit] = 'value' in f.target ? [f.value, f.target.value] : [ratioOf(f), f.target.ratio]
  return f.target.op === '>=' ? x >= limit : x <= limit
}

/** A figure a benchmark could not produce is NaN, which the smoke test catches. */
export const isGoodNumber = (n: number) => Number.isFinite(n) && n > 0

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n)
  const a = Math.abs(n)
  if (a >= 100_000) return `${(n / 1000).toFixed(0)}k`
  if (a >= 10_000) return `${(n / 1000).toFixed(1)}k`
  if (a >= 100) return n.toFixed(0)
  if (a >= 10) return n.toFixed(1)
  return n.toFixed(2)
}

function rows(figures: Figure[]): string[][] {
  return figures.map((f) => {
    const met = targetMet(f)
    return [
      f.group,
      f.name,
      `${fmt(f.value)} ${f.unit}`,
      f.baselineName,
      `${fmt(f.baseline)} ${f.unit}`,
      `${ratioOf(f).toFixed(2)}x`,
      !f.target ? '' : 'value' in f.target ? `${f.target.op} ${fmt(f.target.value)} ${f.unit}` : `${f.target.op} ${f.target.ratio}x`,
      met === undefined ? '' : met ? 'yes' : 'NO',
    ]
  })
}

const HEAD = ['group', 'measurement', 'Fanfare', 'baseline', 'baseline value', 'ratio', 'target', 'met']

/** A plain-text table for the terminal. */
export function textTable(figures: Figure[]): string {
  const all = [HEAD, ...rows(figures)]
  const widths = HEAD.map((_, i) => Math.max(...all.map((r) => r[i].length)))
  return all.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n')
}

/** A Markdown table. */
export function markdownTable(figures: Figure[]): string {
  const line = (r: string[]) => `| ${r.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`
  return [line(HEAD), line(HEAD.map(() => '---')), ...rows(figures).map(line)].join('\n')
}
