import { createHash, timingSafeEqual } from 'node:crypto'

/**
 * Compares two secrets (tokens) in time independent of where they differ and of their lengths:
 * both are hashed to 32 bytes first, so timingSafeEqual always gets equal-length buffers, whatever
 * the strings hold (a non-ASCII string is longer in UTF-8 than in UTF-16). The one way to compare
 * secrets in this code base.
 */
export function safeEqual(a: string, b: string): boolean {
  const da = createHash('sha256').update(a).digest()
  const db = createHash('sha256').update(b).digest()
  return timingSafeEqual(da, db)
}
