import { expect, test } from 'bun:test'
import { loadConfig } from './config'
import { parseCidrs, parseOrigins } from './net'

test('CIDR lists: ranges, bare addresses, and a problem per bad entry', () => {
  const { ranges, problems } = parseCidrs(' 10.0.0.0/8 ,127.0.0.1, fd00::/8,, nope, 1.2.3.4/33')
  expect(ranges.map(([a, bits]) => `${a.toString()}/${bits}`)).toEqual(['10.0.0.0/8', '127.0.0.1/32', 'fd00::/8'])
  expect(problems).toEqual(['"nope" is not an address or CIDR range', '"1.2.3.4/33" is not an address or CIDR range'])
})

test('origin lists are canonical; paths, other schemes and wildcards are problems', () => {
  const { origins, problems } = parseOrigins('https://Game.Example, http://localhost:5173/, https://x.example:443, https://a.example/app, ftp://f.example, *')
  expect(origins).toEqual(['https://game.example', 'http://localhost:5173', 'https://x.example'])
  expect(problems).toHaveLength(3)
})

test('the config refuses bad entries of both lists, naming the variable', () => {
  expect(() => loadConfig({ FANFARE_TRUSTED_PROXIES: '10.0.0.0/8, ten', FANFARE_ALLOWED_ORIGINS: 'game.example' })).toThrow(
    /FANFARE_TRUSTED_PROXIES: "ten"[\s\S]*FANFARE_ALLOWED_ORIGINS: "game.example"/,
  )
  const c = loadConfig({})
  expect([c.FANFARE_TRUSTED_PROXIES, c.FANFARE_ALLOWED_ORIGINS, c.FANFARE_WS_PUBLISHES_PER_SECOND, c.FANFARE_MAX_CONNECTIONS_PER_IP]).toEqual([undefined, undefined, 20, 500])
})
