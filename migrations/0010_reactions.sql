CREATE TABLE "reaction_dedup" (
	"stream" text NOT NULL,
	"by" text NOT NULL,
	"id" text NOT NULL,
	"stored_at" timestamp (3) with time zone NOT NULL,
	CONSTRAINT "reaction_dedup_stream_by_id_pk" PRIMARY KEY("stream","by","id")
);
--> statement-breakpoint
CREATE TABLE "reaction_totals" (
	"stream" text NOT NULL,
	"emoji" text NOT NULL,
	"count" bigint NOT NULL,
	CONSTRAINT "reaction_totals_stream_emoji_pk" PRIMARY KEY("stream","emoji")
);
--> statement-breakpoint
CREATE INDEX "reaction_dedup_stream_stored" ON "reaction_dedup" USING btree ("stream","stored_at");