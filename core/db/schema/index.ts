export * from './auth'
export * from './chat'
export * from './leaderboards'
export * from './projections'
