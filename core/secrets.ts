import { createHash, timingSafeEqual } from 'node:crypto'

/**
 * A secret's SHA-256 digest, for comparing with sameDigest. A secret known in advance (a configured
 * token) is digested once, so checking a candidate against it costs one hash, not two.
 */
export function secretDigest(secret: string): Buffer {
  return createHash('sha256').update(secret).digest()
}

/** Whether two digests from secretDigest are equal, in time independent of where they differ. */
export function sameDigest(a: Buffer, b: Buffer): boolean {
  return timingSafeEqual(a, b)
}

/**
 * Compares two secrets (tokens) in time independent of where they differ and of their lengths:
 * both are hashed to 32 bytes first, so timingSafeEqual always gets equal-length buffers, whatever
 * the strings hold (a non-ASCII string is longer in UTF-8 than in UTF-16). The one way to compare
 * secrets in this code base (secretDigest + sameDigest are the same comparison, split in two).
 */
export function safeEqual(a: string, b: string): boolean {
  return sameDigest(secretDigest(a), secretDigest(b))
}
