ALTER TABLE "matches" ADD COLUMN "lineup" jsonb;--> statement-breakpoint
ALTER TABLE "matches" ADD COLUMN "ignored" jsonb;--> statement-breakpoint
-- Matches started before lineups were recorded: their seats now are the best record left of who played (leavers are gone from them).
UPDATE "matches" SET "lineup" = (SELECT coalesce(jsonb_agg(x.p->'player' ORDER BY x.n), '[]'::jsonb) FROM jsonb_array_elements("players") WITH ORDINALITY AS x(p, n)) WHERE "status" = 'started';
