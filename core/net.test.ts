import { expect, test } from 'bun:test'
import { loadConfig } from './config'
import { parseCidrs, parseNatsServers, parseOrigins } from './net'

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

test('NATS_URL takes one server or a comma-separated cluster; every entry must be a NATS URL', () => {
  expect(parseNatsServers('nats://a:4222, nats://b:4222 ,nats://c.example:4443')).toEqual({
    servers: ['nats://a:4222', 'nats://b:4222', 'nats://c.example:4443'],
    tls: false,
    problems: [],
  })
  expect(loadConfig({ NATS_URL: 'nats://a:4222,nats://b:4222' }).NATS_URL).toBe('nats://a:4222,nats://b:4222')
  expect(() => loadConfig({ NATS_URL: 'nats://a:4222,b:4222' })).toThrow(/NATS_URL: "b:4222" is not a NATS server URL/)
  expect(() => loadConfig({ NATS_URL: 'nats://a:4222,http://b:4222' })).toThrow(/NATS_URL: "http:\/\/b:4222"/)
})

test('NATS_URL may carry the login (user:password@ or token@), taken out of the server URLs', () => {
  expect(parseNatsServers('nats://fan:s%40cret@a:4222,nats://fan:s%40cret@b:4222')).toEqual({
    servers: ['nats://a:4222', 'nats://b:4222'],
    login: { user: 'fan', pass: 's@cret' },
    tls: false,
    problems: [],
  })
  expect(parseNatsServers('tls://t0ken@a:4443')).toEqual({ servers: ['tls://a:4443'], login: { token: 't0ken' }, tls: true, problems: [] })
  // One login for the connection: servers naming different ones are a mistake, reported without the secrets.
  const { problems } = parseNatsServers('nats://fan:one@a:4222,nats://fan:two@b:4222')
  expect(problems).toEqual(['every server must carry the same login (user:password@ or token@), or only the first'])
  expect(parseNatsServers('nats://fan:one@a:4222,nats://b:4222').login).toEqual({ user: 'fan', pass: 'one' })
  expect(() => loadConfig({ NATS_URL: 'nats://fan:secret@a:4222,b:4222' })).toThrow(/NATS_URL: "b:4222" is not a NATS server URL/)
})

test('tls:// servers ask for an encrypted connection; one connection cannot be both', () => {
  expect(parseNatsServers('tls://a:4443,TLS://b:4443')).toEqual({ servers: ['tls://a:4443', 'tls://b:4443'], tls: true, problems: [] })
  expect(parseNatsServers('nats://a:4222').tls).toBe(false)
  expect(() => loadConfig({ NATS_URL: 'tls://a:4443,nats://b:4222' })).toThrow(/NATS_URL: every server must be tls:\/\/ \(an encrypted connection\) or every one nats:\/\/, not some of each/)
})

test('FANFARE_REPLICAS defaults to 1 and stays within what JetStream allows', () => {
  expect(loadConfig({}).FANFARE_REPLICAS).toBe(1)
  expect(loadConfig({ FANFARE_REPLICAS: '3' }).FANFARE_REPLICAS).toBe(3)
  expect(() => loadConfig({ FANFARE_REPLICAS: '6' })).toThrow(/FANFARE_REPLICAS/)
  expect(() => loadConfig({ FANFARE_REPLICAS: '0' })).toThrow(/FANFARE_REPLICAS/)
})
