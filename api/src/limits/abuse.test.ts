import { expect, test } from 'bun:test'
import { abuseMeter } from './abuse'

test('refusals at 3x the rate for the whole window are tolerated; past 3x they are abuse', () => {
  let t = 0
  const meter = abuseMeter({ windowMs: 5000, factor: 3, now: () => t })
  // A limit of 20/s: 300 refusals within 5 s are exactly 3x; the 301st passes it.
  for (let i = 0; i < 300; i++) {
    expect(meter.refused(20)).toBe(false)
    t += 15
  }
  expect(meter.refused(20)).toBe(true)
})

test('old refusals leave the window: the same count spread over a longer time is no abuse', () => {
  let t = 0
  const meter = abuseMeter({ windowMs: 5000, factor: 3, now: () => t })
  // 2x the rate refused, for a minute: never abusive.
  for (let i = 0; i < 2400; i++) {
    expect(meter.refused(20)).toBe(false)
    t += 25
  }
})

test('a refusal weighs by the rate of the budget that refused it', () => {
  let t = 0
  const meter = abuseMeter({ windowMs: 5000, factor: 3, now: () => t })
  // A budget of 1000/s: 301 refusals are 0.3 s of it, far from the 15 s that would be abuse.
  for (let i = 0; i < 301; i++) expect(meter.refused(1000)).toBe(false)
  // A budget of 1/s: 15 s of it refused at once is the limit; the next one passes it.
  for (let i = 0; i < 14; i++) expect(meter.refused(1)).toBe(false)
  expect(meter.refused(1)).toBe(true)
})
