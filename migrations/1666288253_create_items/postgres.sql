/*
Example migration for the dev environment:
  make run
  make apply_migration name=1666288253_create_items
*/
CREATE TABLE public.items (
  id text PRIMARY KEY,
  content text
);
ALTER TABLE public.items REPLICA IDENTITY FULL;
