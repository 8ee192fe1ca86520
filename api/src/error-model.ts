import { t } from 'elysia'

/** OpenAPI schema of the ErrorBody every 4xx/5xx carries. */
export const ErrorResponse = t.Object(
  {
    error: t.Object({
      code: t.String({ description: 'stable machine-readable code, e.g. invalid_request' }),
      message: t.String(),
      details: t.Optional(t.Unknown()),
    }),
  },
  { description: 'Error' },
)
