/**
 * Event ids for publishes: a random prefix per client and a counter, `<prefix>-<n>`. Made with
 * crypto.getRandomValues, which (unlike crypto.randomUUID) browsers also give pages served over
 * plain http, such as a game's LAN server.
 */
export function eventIds(): () => string {
  const bytes = new Uint8Array(12)
  globalThis.crypto.getRandomValues(bytes)
  const prefix = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')
  let n = 0
  return () => `${prefix}-${++n}`
}
