import { inRanges, parseAddress, parseCidrs, type Cidr } from '../../../core/net'

/**
 * Finds the client's address of a request: the peer's, unless the peer is a trusted proxy. Then
 * `X-Forwarded-For` is read from the right (each proxy appends the address it saw), past every
 * trusted proxy, and the first address that is not one is the client. Anything to its left was
 * written by the client itself and proves nothing. Addresses are canonical (`::ffff:1.2.3.4` is
 * `1.2.3.4`), so one client is one key whichever way it is written.
 */
export type ClientAddress = (peer: string | undefined, forwardedFor: string | null) => string

/** The address given when the peer is unknown (an in-process request). */
export const UNKNOWN_ADDRESS = 'unknown'

export function clientAddress(trustedProxies: string | readonly Cidr[] | undefined): ClientAddress {
  const trusted = typeof trustedProxies === 'string' || trustedProxies === undefined ? parseCidrs(trustedProxies).ranges : trustedProxies
  return (peer, forwardedFor) => {
    const peerAddr = peer === undefined ? undefined : parseAddress(peer)
    if (!peerAddr) return peer ?? UNKNOWN_ADDRESS
    if (!forwardedFor || !inRanges(peerAddr, trusted)) return peerAddr.toString()
    let client = peerAddr
    const hops = forwardedFor.split(',')
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = parseAddress(hops[i])
      // A trusted proxy always writes an address: garbage came from further left, from the client;
      // the nearest hop we can vouch for stands for it.
      if (!hop) break
      client = hop
      if (!inRanges(hop, trusted)) break
    }
    return client.toString()
  }
}
