import ipaddr from 'ipaddr.js'

/** An address range: an address and how many leading bits must match. */
export type Cidr = [ipaddr.IPv4 | ipaddr.IPv6, number]

/**
 * Parses an address as clients and peers give it (IPv4, IPv6, IPv4-mapped IPv6 such as
 * `::ffff:127.0.0.1`, which becomes the IPv4 address). Undefined when it is not an address.
 */
export function parseAddress(text: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  const trimmed = text.trim()
  if (!ipaddr.isValid(trimmed)) return undefined
  return ipaddr.process(trimmed)
}

/**
 * Parses a comma-separated list of CIDRs (`10.0.0.0/8, 127.0.0.1/32, fd00::/8`); a bare address
 * is its own /32 or /128. An IPv4-mapped IPv6 range becomes the IPv4 range, so it matches what
 * parseAddress gives for the same peers. Returns the ranges and a problem per bad entry.
 */
export function parseCidrs(text: string | undefined): { ranges: Cidr[]; problems: string[] } {
  const ranges: Cidr[] = []
  const problems: string[] = []
  for (const entry of splitList(text)) {
    try {
      const [addr, bits] = entry.includes('/') ? ipaddr.parseCIDR(entry) : bare(entry)
      if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96) {
        ranges.push([(addr as ipaddr.IPv6).toIPv4Address(), bits - 96])
      } else {
        ranges.push([addr, bits])
      }
    } catch {
      problems.push(`${JSON.stringify(entry)} is not an address or CIDR range`)
    }
  }
  return { ranges, problems }
}

function bare(entry: string): Cidr {
  const addr = ipaddr.parse(entry)
  return [addr, addr.kind() === 'ipv4' ? 32 : 128]
}

/**
 * What is wrong with `text` as an address to listen on (HOST-like settings): an IP address (`::1`,
 * `0.0.0.0`) or a host name (`localhost`, `metrics.internal`); a port, a scheme, brackets or spaces
 * are not part of it. Undefined when it is fine.
 */
export function listenHostProblem(text: string): string | undefined {
  if (ipaddr.isValid(text)) return undefined
  if (/^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/.test(text) && !/^[0-9.]+$/.test(text)) return undefined
  return `${JSON.stringify(text)} is not an address or host name to listen on (like 127.0.0.1, ::1 or localhost: no port, scheme or brackets)`
}

/** Whether `addr` lies in one of `ranges` (an IPv4 address never matches an IPv6 range, nor the reverse). */
export function inRanges(addr: ipaddr.IPv4 | ipaddr.IPv6, ranges: readonly Cidr[]): boolean {
  return ranges.some(([base, bits]) => base.kind() === addr.kind() && addr.match(base, bits))
}

/**
 * Parses a comma-separated list of web origins (`https://game.example, http://localhost:5173`)
 * into their canonical form (`new URL(o).origin`: lower-case scheme and host, default port
 * dropped). An entry with a path, query, credentials or another scheme than http(s) is a problem.
 */
export function parseOrigins(text: string | undefined): { origins: string[]; problems: string[] } {
  const origins: string[] = []
  const problems: string[] = []
  for (const entry of splitList(text)) {
    const origin = canonicalOrigin(entry)
    if (origin === undefined || !/^https?:\/\/[^/?#]+\/?$/i.test(entry)) problems.push(`${JSON.stringify(entry)} is not an origin like https://game.example`)
    else origins.push(origin)
  }
  return { origins, problems }
}

/** The canonical form of an http(s) origin, or undefined when `text` is not one. */
export function canonicalOrigin(text: string): string | undefined {
  try {
    const url = new URL(text)
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return undefined
    if (url.username || url.password) return undefined
    return url.origin
  } catch {
    return undefined
  }
}

/** How a client logs in to NATS: a user and password, or a token. */
export type NatsLogin = { user: string; pass: string } | { token: string }

/**
 * Parses NATS_URL: one or more comma-separated server URLs (`nats://a:4222,nats://b:4222`), the
 * seed list a client connects through (it learns the rest of a cluster from the servers). Each
 * entry must be a nats:// or tls:// URL with a host. A server requiring a login takes it in the
 * URL as for other NATS clients, `nats://user:password@host:4222` or `nats://token@host:4222`
 * (percent-encoded): nats.js ignores it there, so it is returned as `login` and taken out of
 * `servers`. One connection has one login: entries naming different ones are a problem (reported
 * without them).
 *
 * `tls` is true when the servers are tls:// URLs: the connection must then be encrypted. nats.js
 * reads no scheme (it takes host and port from any URL) and encrypts only when the server asks
 * for it or its `tls` option is given, so without that option a tls:// URL reached a plain-text
 * server in plain text. One connection is encrypted or not: tls:// and nats:// entries together
 * are a problem.
 */
export function parseNatsServers(text: string | undefined): { servers: string[]; login?: NatsLogin; tls: boolean; problems: string[] } {
  const servers: string[] = []
  const problems: string[] = []
  let login: NatsLogin | undefined
  let differ = false
  const schemes = new Set<string>()
  for (const entry of splitList(text)) {
    let url: URL | undefined
    try {
      url = /^(nats|tls):\/\//i.test(entry) ? new URL(entry) : undefined
    } catch {}
    if (!url?.hostname) {
      problems.push(`${JSON.stringify(entry.replace(/\/\/[^/@]*@/, '//***@'))} is not a NATS server URL like nats://host:4222`)
      continue
    }
    if (url.username || url.password) {
      let own: NatsLogin
      try {
        own = url.password ? { user: decodeURIComponent(url.username), pass: decodeURIComponent(url.password) } : { token: decodeURIComponent(url.username) }
      } catch {
        // decodeURIComponent's URIError says only "URI error"; the login itself is not repeated.
        problems.push(`the login in ${JSON.stringify(entry.replace(/\/\/[^/@]*@/, '//***@'))} is not percent-encoded: a % must start %XX (encode the user and password with encodeURIComponent)`)
        continue
      }
      if (login && JSON.stringify(login) !== JSON.stringify(own)) differ = true
      login ??= own
      url.username = ''
      url.password = ''
    }
    schemes.add(url.protocol)
    servers.push(url.href.replace(/\/$/, ''))
  }
  if (differ) problems.push('every server must carry the same login (user:password@ or token@), or only the first')
  if (schemes.size > 1) problems.push('every server must be tls:// (an encrypted connection) or every one nats://, not some of each')
  return { servers, ...(login ? { login } : {}), tls: schemes.has('tls:') && schemes.size === 1, problems }
}

function splitList(text: string | undefined): string[] {
  return (text ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
}
