-- The user-profiles example: the users table the application writes (the
-- seed article's "user profile cache from PostgreSQL").
create table users (
    id serial primary key,
    name varchar(255),
    email varchar(255),
    plan varchar(50),
    password_hash text,
    updated_at timestamp default now()
);
