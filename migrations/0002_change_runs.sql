-- Outbox rows become change runs (several consecutive versions of one channel per row), keyed by
-- channel, epoch and first version like their msgID, stored as the JSON text that is published.
-- Rows left by older workers are turned into runs of one.
ALTER TABLE "change_outbox" ADD COLUMN "epoch" text;--> statement-breakpoint
UPDATE "change_outbox" SET "epoch" = "payload"->>'epoch', "payload" = jsonb_build_object('channel', "payload"->'channel', 'version', "payload"->'version', 'epoch', "payload"->'epoch', 'at', "payload"->'at', 'changes', jsonb_build_array("payload"->'data'));--> statement-breakpoint
ALTER TABLE "change_outbox" ALTER COLUMN "epoch" SET NOT NULL;--> statement-breakpoint
ALTER TABLE "change_outbox" ALTER COLUMN "payload" SET DATA TYPE text;--> statement-breakpoint
ALTER TABLE "change_outbox" DROP COLUMN "id";--> statement-breakpoint
ALTER TABLE "change_outbox" ADD CONSTRAINT "change_outbox_channel_epoch_version_pk" PRIMARY KEY("channel","epoch","version");
