insert into users (id, name, email, plan, password_hash) values
    (1042, 'Alice', 'alice@example.com', 'free', 'x'),
    (1043, 'Bob', 'bob@example.com', 'pro', 'x'),
    (1044, 'Carol', null, 'free', 'x');
alter sequence users_id_seq restart with 2001;
