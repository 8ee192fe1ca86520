-- Leaderboard periods: a board's rules gain a reset, and a standing belongs to a period ('' on
-- boards without periods, which every existing standing is). The column comes first: the new
-- primary key names it. The ranking index is made before the key on purpose: without statistics
-- (a burst of inserts before autovacuum's analyze) the planner finds both equally cheap for a
-- per-key lookup, takes the newer one, and only the key finds a player's row without walking the
-- board's (core/db/recordset.int.test.ts checks it).
ALTER TABLE "leaderboards" ADD COLUMN "reset" text DEFAULT 'none' NOT NULL;--> statement-breakpoint
ALTER TABLE "leaderboard_entries" ADD COLUMN "period" text DEFAULT '' NOT NULL;--> statement-breakpoint
DROP INDEX "leaderboard_entries_rank";--> statement-breakpoint
CREATE INDEX "leaderboard_entries_rank" ON "leaderboard_entries" USING btree ("board","period","score","reached_seq");--> statement-breakpoint
ALTER TABLE "leaderboard_entries" DROP CONSTRAINT "leaderboard_entries_board_player_pk";--> statement-breakpoint
ALTER TABLE "leaderboard_entries" ADD CONSTRAINT "leaderboard_entries_board_player_period_pk" PRIMARY KEY("board","player","period");
