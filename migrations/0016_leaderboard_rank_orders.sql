DROP INDEX "leaderboard_entries_rank";--> statement-breakpoint
CREATE INDEX "leaderboard_entries_rank_desc" ON "leaderboard_entries" USING btree ("board","period","score" DESC NULLS FIRST,"reached_seq",("player" || ''));--> statement-breakpoint
CREATE INDEX "leaderboard_entries_rank" ON "leaderboard_entries" USING btree ("board","period","score","reached_seq",("player" || ''));