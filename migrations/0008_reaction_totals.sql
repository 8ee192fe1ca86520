CREATE TABLE "reaction_totals" (
	"stream" text NOT NULL,
	"emoji" text NOT NULL,
	"count" bigint NOT NULL,
	CONSTRAINT "reaction_totals_stream_emoji_pk" PRIMARY KEY("stream","emoji")
);
