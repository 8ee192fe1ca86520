import { expect, test } from 'bun:test'
import { projectionAreas, projectionNames } from '../../../core/projections'
import { projections } from '.'

// API nodes watch the projections' unapplied events by core's table (see startRetentionWatch);
// a projection consuming another area there would be watched on the wrong subjects.
test("core's projection areas are the ones the workers' projections consume", () => {
  expect(Object.fromEntries(projections.map((p) => [p.name, p.area]))).toEqual(projectionAreas)
  expect(projections.map((p) => p.name).sort()).toEqual([...projectionNames].sort())
})
