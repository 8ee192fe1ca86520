import { expect, test } from 'bun:test'
import { Function as PprofFunction, Line, Location, Profile, Sample, StringTable, ValueType } from 'pprof-format'
import { summarize } from './pprof-summary'

/**
 * A Go-shaped CPU profile: samples and cpu/nanoseconds, stacks leaf first, an inlined call sharing
 * its caller's location. `main` calls `store` (which inlines `grow`) and `deliver`.
 */
function profile(): Profile {
  const strings = new StringTable()
  const fns = ['main', 'store', 'grow', 'deliver'].map((name, i) => new PprofFunction({ id: i + 1, name: strings.dedup(name) }))
  const id = (name: string) => fns.find((f) => strings.strings[Number(f.name)] === name)!.id
  const location = (lid: number, ...names: string[]) => new Location({ id: lid, line: names.map((n) => new Line({ functionId: id(n) })) })
  // Location 2 is `grow` inlined into `store`: innermost first.
  const locations = [location(1, 'main'), location(2, 'grow', 'store'), location(3, 'deliver')]
  const ms = 1_000_000
  const samples = [
    new Sample({ locationId: [2, 1], value: [3, 30 * ms] }), // main > store > grow
    new Sample({ locationId: [3, 1], value: [1, 10 * ms] }), // main > deliver
    new Sample({ locationId: [1], value: [6, 60 * ms] }), // main itself
  ]
  return new Profile({
    sampleType: [new ValueType({ type: strings.dedup('samples'), unit: strings.dedup('count') }), new ValueType({ type: strings.dedup('cpu'), unit: strings.dedup('nanoseconds') })],
    sample: samples,
    location: locations,
    function: fns,
    stringTable: strings,
  })
}

test('pprof-summary: self and total time per function from a Go CPU profile, inlined calls counted', () => {
  const { totalMs, flat, cum } = summarize(Profile.decode(profile().encode()))
  const byFn = (rows: { fn: string; pct: number }[]) => Object.fromEntries(rows.map((r) => [r.fn, r.pct]))
  expect(totalMs).toBe(100)
  expect(flat.map((r) => r.fn)).toEqual(['main', 'grow', 'deliver'])
  expect(byFn(flat)).toEqual({ main: 60, grow: 30, deliver: 10 })
  // An inlined call counts for its caller too; a function counts once per sample.
  expect(byFn(cum)).toEqual({ main: 100, store: 30, grow: 30, deliver: 10 })
  expect(summarize(Profile.decode(profile().encode()), 2).flat).toHaveLength(2)
})
