import type { NatsConnection } from '@nats-io/transport-node'
import type { Config } from '../../../core/config'
import type { Db } from '../../../core/db/client'
import type { Logger } from '../../../core/logger'
import type { SubscriptionWatch } from '../../../core/nats-subscriptions'
import { createAuthenticator, type Authenticator } from './authenticate'
import { createJwtVerifier } from './jwt'
import { createKeyStore, type KeyStore } from './keys'
import { startRevocations, type Revocations } from './revocations'
import { createRoomAccess, type RoomAccess } from './rooms'

/** Everything an API node needs to know who is calling and what they may do. */
export type Security = {
  authenticator: Authenticator
  keys: KeyStore
  revocations: Revocations
  rooms: RoomAccess
  stop: () => Promise<void>
}

/** Starts an API node's security services (loads revocations from Postgres, listens for changes). */
export async function startSecurity(deps: { config: Config; db: Db; nc: NatsConnection; logger: Logger; subscriptions?: SubscriptionWatch; now?: () => number }): Promise<Security> {
  const prefix = deps.config.FANFARE_SUBJECT_PREFIX
  const keys = createKeyStore({ db: deps.db, now: deps.now })
  const revocations = await startRevocations({ db: deps.db, nc: deps.nc, prefix, logger: deps.logger, forgetKey: (id) => keys.forget(id), subscriptions: deps.subscriptions, now: deps.now })
  const rooms = createRoomAccess({ db: deps.db, nc: deps.nc, prefix, logger: deps.logger, subscriptions: deps.subscriptions, now: deps.now })
  const authenticator = createAuthenticator({ config: deps.config, keys, jwt: createJwtVerifier(deps.config, { now: deps.now, logger: deps.logger }), revocations, now: deps.now })
  return {
    authenticator,
    keys,
    revocations,
    rooms,
    stop: async () => {
      rooms.stop()
      await revocations.stop()
      await keys.stop()
    },
  }
}
