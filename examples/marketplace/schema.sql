-- "Who is online now": specialists and their sessions, written by legacy systems
-- straight to Postgres. Unqualified names: runs in the current search_path.
create table if not exists specialist (
    id         bigint primary key,
    name       text not null,
    online     boolean not null default false,
    updated_at timestamptz not null default now()
);

create table if not exists session (
    id            bigint primary key,
    specialist_id bigint not null references specialist (id),
    started_at    timestamptz not null default now(),
    ended_at      timestamptz
);

create index if not exists session_specialist_active on session (specialist_id) where ended_at is null;
