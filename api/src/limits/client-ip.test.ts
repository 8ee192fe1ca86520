import { expect, test } from 'bun:test'
import { clientAddress, UNKNOWN_ADDRESS } from './client-ip'

test('without trusted proxies the peer is the client, whatever X-Forwarded-For claims', () => {
  const ip = clientAddress(undefined)
  expect(ip('203.0.113.7', '1.2.3.4')).toBe('203.0.113.7')
  expect(ip('::ffff:127.0.0.1', null)).toBe('127.0.0.1') // one client, one key
  expect(ip(undefined, '1.2.3.4')).toBe(UNKNOWN_ADDRESS)
})

test('a peer outside the trusted ranges is the client even when others are trusted', () => {
  const ip = clientAddress('10.0.0.0/8')
  expect(ip('203.0.113.7', '1.2.3.4')).toBe('203.0.113.7')
})

test('from a trusted proxy: the rightmost address that is not a trusted proxy', () => {
  const ip = clientAddress('10.0.0.0/8, 127.0.0.1')
  // The client wrote "6.6.6.6" itself; the first proxy appended the address it saw (198.51.100.4).
  expect(ip('127.0.0.1', '6.6.6.6, 198.51.100.4, 10.1.2.3')).toBe('198.51.100.4')
  expect(ip('::ffff:127.0.0.1', ' 198.51.100.4 ')).toBe('198.51.100.4')
  // Every hop trusted: the leftmost stands for the client.
  expect(ip('127.0.0.1', '10.9.9.9, 10.1.2.3')).toBe('10.9.9.9')
  // No header: the proxy itself.
  expect(ip('127.0.0.1', null)).toBe('127.0.0.1')
})

test('garbage in X-Forwarded-For never becomes the address; the nearest hop vouched for does', () => {
  const ip = clientAddress('127.0.0.1/32, 10.0.0.0/8')
  expect(ip('127.0.0.1', 'not-an-ip')).toBe('127.0.0.1')
  expect(ip('127.0.0.1', 'not-an-ip, 10.1.2.3')).toBe('10.1.2.3')
  expect(ip('127.0.0.1', '1.2.3.4, , 10.1.2.3')).toBe('10.1.2.3')
})

test('IPv6 ranges and IPv4-mapped ranges', () => {
  const ip = clientAddress('fd00::/8, ::ffff:192.0.2.0/120')
  expect(ip('fd00::1', '2001:db8::5')).toBe('2001:db8::5')
  expect(ip('192.0.2.9', '2001:db8::5')).toBe('2001:db8::5')
  expect(ip('2001:db8::9', '198.51.100.4')).toBe('2001:db8::9')
})
