-- Message ids are unique per room, not globally: event ids are de-duplicated per publisher, so two
-- rooms may hold the same id. Postgres named the old inline primary key chat_messages_pkey.
ALTER TABLE "chat_messages" DROP CONSTRAINT "chat_messages_pkey";--> statement-breakpoint
ALTER TABLE "chat_messages" ADD CONSTRAINT "chat_messages_room_id_pk" PRIMARY KEY("room","id");--> statement-breakpoint
ALTER TABLE "chat_messages" ADD COLUMN "posted_by" text DEFAULT '' NOT NULL;
