CREATE TABLE "chat_messages" (
	"id" text PRIMARY KEY NOT NULL,
	"room" text NOT NULL,
	"user_id" text NOT NULL,
	"text" text NOT NULL,
	"seq" bigint NOT NULL,
	"posted_at" timestamp with time zone NOT NULL,
	"deleted" boolean DEFAULT false NOT NULL
);
--> statement-breakpoint
CREATE TABLE "leaderboard_entries" (
	"board" text NOT NULL,
	"player" text NOT NULL,
	"score" double precision NOT NULL,
	"reached_seq" bigint NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "leaderboard_entries_board_player_pk" PRIMARY KEY("board","player")
);
--> statement-breakpoint
CREATE TABLE "leaderboards" (
	"board" text PRIMARY KEY NOT NULL,
	"sort_order" text DEFAULT 'desc' NOT NULL,
	"operator" text DEFAULT 'best' NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "change_outbox" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"channel" text NOT NULL,
	"version" bigint NOT NULL,
	"payload" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "channel_versions" (
	"channel" text PRIMARY KEY NOT NULL,
	"version" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "dead_letters" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"projection" text NOT NULL,
	"partition" integer NOT NULL,
	"stream_seq" bigint NOT NULL,
	"subject" text NOT NULL,
	"event_id" text,
	"reason" text NOT NULL,
	"payload" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "projection_checkpoints" (
	"projection" text NOT NULL,
	"partition" integer NOT NULL,
	"seq" bigint DEFAULT 0 NOT NULL,
	"fence" bigint DEFAULT 0 NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "projection_checkpoints_projection_partition_pk" PRIMARY KEY("projection","partition")
);
--> statement-breakpoint
CREATE INDEX "chat_messages_room_seq" ON "chat_messages" USING btree ("room","seq");--> statement-breakpoint
CREATE INDEX "leaderboard_entries_rank" ON "leaderboard_entries" USING btree ("board","score","reached_seq");--> statement-breakpoint
CREATE INDEX "change_outbox_created" ON "change_outbox" USING btree ("created_at");--> statement-breakpoint
CREATE INDEX "dead_letters_created" ON "dead_letters" USING btree ("created_at");