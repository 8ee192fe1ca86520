import { expect, test } from 'bun:test'
import { originPolicy } from './origins'

test('unset: any origin', () => {
  const p = originPolicy(undefined)
  expect(p.allowed).toBeUndefined()
  expect(p.allows('https://evil.example', 'api.example')).toBe(true)
})

test('set: listed origins (compared canonically), the API\'s own, and requests without Origin', () => {
  const p = originPolicy('https://game.example, http://localhost:5173')
  expect(p.allows('https://game.example', 'api.example')).toBe(true)
  expect(p.allows('HTTPS://GAME.EXAMPLE:443', 'api.example')).toBe(true)
  expect(p.allows('http://localhost:5173', 'api.example')).toBe(true)
  expect(p.allows(null, 'api.example')).toBe(true) // not a browser page of another site
  expect(p.allows('https://api.example:8443', 'api.example:8443')).toBe(true) // same origin
  for (const bad of ['https://evil.example', 'http://game.example', 'https://game.example.evil.example', 'null', 'constructor', '__proto__', '']) {
    expect([bad, p.allows(bad, 'api.example')]).toEqual([bad, false])
  }
})
