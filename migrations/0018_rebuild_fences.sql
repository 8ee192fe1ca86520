CREATE TABLE "rebuild_fences" (
	"job_id" text PRIMARY KEY NOT NULL,
	"attempt" integer NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
