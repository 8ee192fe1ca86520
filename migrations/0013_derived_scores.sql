CREATE TABLE "derived_scores" (
	"id" text PRIMARY KEY NOT NULL,
	"seq" bigint NOT NULL
);
