ALTER TABLE "leaderboards" ADD COLUMN "has_scores" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "leaderboards" ADD COLUMN "configured" boolean DEFAULT true NOT NULL;--> statement-breakpoint
-- Boards scored before this migration: their rules are fixed now, as the admin API used to decide
-- by looking for entries. Boards with entries but no row get one holding the defaults they used.
UPDATE "leaderboards" l SET "has_scores" = true WHERE EXISTS (SELECT 1 FROM "leaderboard_entries" e WHERE e."board" = l."board");--> statement-breakpoint
INSERT INTO "leaderboards" ("board", "has_scores", "configured") SELECT DISTINCT "board", true, false FROM "leaderboard_entries" ON CONFLICT ("board") DO NOTHING;
