ALTER TABLE "projection_checkpoints" ADD COLUMN "unapplied_seq" bigint;--> statement-breakpoint
ALTER TABLE "projection_checkpoints" ADD COLUMN "unapplied_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "projection_checkpoints" ADD COLUMN "expired_from" bigint;--> statement-breakpoint
ALTER TABLE "projection_checkpoints" ADD COLUMN "expired_to" bigint;--> statement-breakpoint
ALTER TABLE "projection_checkpoints" ADD COLUMN "expired_at" timestamp with time zone;