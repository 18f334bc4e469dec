-- The application's role and database, created when the compose PostgreSQL first starts.
CREATE ROLE app LOGIN PASSWORD 'app-secret';
CREATE DATABASE app OWNER app;
