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

/** What any route that takes a JSON body may answer before it runs: 400 `bad_json`/`too_deep`, 413 `payload_too_large` (see body.ts). */
export const BodyErrors = { 400: ErrorResponse, 413: ErrorResponse }
