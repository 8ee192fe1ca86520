// A map or set kept to its newest entries: memos and recent-history lists that must stay bounded
// whatever clients or the stream send. Oldest means least recently put (a Map or Set iterates in
// insertion order, and these take a key out before putting it back), not least recently read.

/** Puts `key` as the newest entry of `map`, then forgets the oldest entries past `max`. */
export function putNewest<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key)
  map.set(key, value)
  dropOldest(map, max)
}

/** Adds `key` as the newest entry of `set`, then forgets the oldest entries past `max`. */
export function addNewest<K>(set: Set<K>, key: K, max: number): void {
  set.delete(key)
  set.add(key)
  dropOldest(set, max)
}

function dropOldest<K>(entries: Map<K, unknown> | Set<K>, max: number): void {
  while (entries.size > max) entries.delete(entries.keys().next().value as K)
}
