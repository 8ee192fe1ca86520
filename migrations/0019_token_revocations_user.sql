-- A jti may be revoked for one user (POST /admin/tokens/revoke { jti, exp, user }): the key is
-- (jti, user_id), user_id '' meaning any user's token (what every row so far meant). Postgres named
-- the old inline primary key token_revocations_pkey.
ALTER TABLE "token_revocations" ADD COLUMN "user_id" text DEFAULT '' NOT NULL;--> statement-breakpoint
ALTER TABLE "token_revocations" DROP CONSTRAINT "token_revocations_pkey";--> statement-breakpoint
ALTER TABLE "token_revocations" ADD CONSTRAINT "token_revocations_jti_user_id_pk" PRIMARY KEY("jti","user_id");
