-- FANFARE_LIVE_BATCHES: channel history kept in Postgres (the outbox rows, kept after publishing), read by
-- resumes instead of per-channel subjects of the change streams; pruned by the workers per channel.
CREATE TABLE "change_history" (
	"channel" text NOT NULL,
	"epoch" text NOT NULL,
	"version" bigint NOT NULL,
	"payload" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "change_history_channel_epoch_version_pk" PRIMARY KEY("channel","epoch","version")
);
--> statement-breakpoint
CREATE INDEX "change_history_created" ON "change_history" USING btree ("created_at");