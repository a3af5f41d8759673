-- "Who is online now" on MariaDB (or MySQL 8): the same tables as schema.sql,
-- written by legacy systems straight to the database. Run in the marketplace database.
create table if not exists specialist (
    id         bigint primary key,
    name       varchar(200) not null,
    online     boolean not null default false,
    updated_at timestamp(3) not null default current_timestamp(3) on update current_timestamp(3)
);

create table if not exists session (
    id            bigint primary key,
    specialist_id bigint not null,
    started_at    timestamp(3) not null default current_timestamp(3),
    ended_at      timestamp(3) null,
    foreign key (specialist_id) references specialist (id),
    index session_specialist_active (specialist_id, ended_at)
);
