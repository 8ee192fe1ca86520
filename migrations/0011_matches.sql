CREATE TABLE "event_outbox" (
	"msg_id" text PRIMARY KEY NOT NULL,
	"payload" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "match_modes" (
	"mode" text PRIMARY KEY NOT NULL,
	"board" text NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "matches" (
	"match" text PRIMARY KEY NOT NULL,
	"mode" text NOT NULL,
	"max_players" integer NOT NULL,
	"properties" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"status" text NOT NULL,
	"players" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"player_count" integer DEFAULT 0 NOT NULL,
	"results" jsonb,
	"board" text,
	"created_at" timestamp with time zone NOT NULL,
	"started_at" timestamp with time zone,
	"ended_at" timestamp with time zone,
	"created_seq" bigint NOT NULL,
	"grace_until" timestamp with time zone
);
--> statement-breakpoint
CREATE INDEX "event_outbox_created" ON "event_outbox" USING btree ("created_at");--> statement-breakpoint
CREATE INDEX "matches_by_status" ON "matches" USING btree ("status","mode","created_seq");--> statement-breakpoint
CREATE INDEX "matches_grace" ON "matches" USING btree ("grace_until") WHERE grace_until is not null;