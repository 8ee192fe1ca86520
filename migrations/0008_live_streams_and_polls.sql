CREATE TABLE "poll_votes" (
	"poll" text NOT NULL,
	"voter" text NOT NULL,
	"option" integer NOT NULL,
	"seq" bigint NOT NULL,
	CONSTRAINT "poll_votes_poll_voter_pk" PRIMARY KEY("poll","voter")
);
--> statement-breakpoint
CREATE TABLE "polls" (
	"poll" text PRIMARY KEY NOT NULL,
	"status" text NOT NULL,
	"stream" text,
	"question" text,
	"options" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"votes" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"ignored_votes" integer DEFAULT 0 NOT NULL,
	"opened_at" timestamp with time zone,
	"closes_at" timestamp with time zone,
	"closed_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "stream_viewers" (
	"stream" text NOT NULL,
	"user_id" text NOT NULL,
	"broadcast" integer NOT NULL,
	CONSTRAINT "stream_viewers_stream_user_id_pk" PRIMARY KEY("stream","user_id")
);
--> statement-breakpoint
CREATE TABLE "streams" (
	"stream" text PRIMARY KEY NOT NULL,
	"status" text DEFAULT 'offline' NOT NULL,
	"title" text,
	"category" text,
	"started_at" timestamp with time zone,
	"ended_at" timestamp with time zone,
	"broadcast" integer DEFAULT 0 NOT NULL,
	"viewers" integer DEFAULT 0 NOT NULL,
	"peak_viewers" integer DEFAULT 0 NOT NULL,
	"unique_viewers" integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE INDEX "polls_open_by_stream" ON "polls" USING btree ("stream","opened_at") WHERE status = 'open';--> statement-breakpoint
CREATE INDEX "streams_live_by_viewers" ON "streams" USING btree ("viewers" DESC NULLS LAST,"stream") WHERE status = 'live';